"""Data-parallel training with compressed gradients (a DDP communication hook).

    torchrun --nproc_per_node 2 examples/ddp_qsgd_hook.py --compressor qsgd:4
    torchrun --nproc_per_node 2 examples/ddp_qsgd_hook.py --compressor sign --error-feedback

Any compressor spec works ('qsgd:8', 'sign', 'topk:0.01', 'randomk:0.01', ...); see
docs/ddp-hooks.md for the comparison with torch's fp16 and PowerSGD hooks.
"""
import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from moniqua_kernels import data, gossip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compressor", default="qsgd:8")
    ap.add_argument("--error-feedback", action="store_true")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    ds = data.synthetic(seed=0)
    shard = data.shard(ds.x_train.shape[0], world, 0)[rank]
    model = DDP(data.make_model("mlp", ds.n_features, ds.n_classes, seed=0))
    state = gossip.register_compressed_hook(model, compressor=args.compressor,
                                            error_feedback=args.error_feedback)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(args.steps):
        idx = shard[torch.randint(shard.numel(), (32,), generator=gen)]
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean()
    n = sum(p.numel() for p in model.parameters())
    print(f"rank {rank}: test acc {100 * float(acc):.2f}%, "
          f"{8 * state.bytes_sent / (args.steps * n):.2f} bits/param/step sent")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

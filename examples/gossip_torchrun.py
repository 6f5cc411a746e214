"""Decentralized training on torch.distributed with Moniqua (or any gossip algorithm).

    torchrun --nproc_per_node 4 examples/gossip_torchrun.py --algorithm moniqua --bits 1

gloo on CPU; with CUDA and --backend nccl each rank uses GPU (local rank).  Every rank
trains on its own shard of the synthetic problem and gossips with its ring neighbours.
"""
import argparse
import datetime
import os

import torch
import torch.distributed as dist

from moniqua_kernels import gossip
from moniqua_kernels import data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--algorithm", default="moniqua", choices=sorted(gossip.ALGORITHMS))
    ap.add_argument("--bits", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--topology", default="ring")
    ap.add_argument("--backend", default="gloo")
    args = ap.parse_args()
    timeout = 60.0
    dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
              if args.backend == "nccl" else torch.device("cpu"))
    torch.set_num_threads(1)
    ds = data.synthetic(seed=0)
    shard = data.shard(ds.x_train.shape[0], world, 0)[rank]
    model = data.make_model("mlp", ds.n_features, ds.n_classes, seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    kwargs = {}
    if args.algorithm == "moniqua":
        # theta tied to the learning rate, checked every 100 steps
        kwargs = dict(bits=args.bits, theta=gossip.LRProportional(3.0, opt),
                      gamma=0.05 if args.bits == 1 else 0.2, monitor=100)
    elif args.algorithm in ("choco", "squarm"):
        kwargs = dict(compressor="qsgd:4")
    g = gossip.ALGORITHMS[args.algorithm](model, args.topology, timeout=timeout, **kwargs)
    gen = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        idx = shard[torch.randint(shard.numel(), (16,), generator=gen)]
        x, y = ds.x_train[idx].to(device), ds.y_train[idx].to(device)
        g.begin()                      # send the current model while computing
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        g.end()                        # mix in the neighbours' models
        opt.step()
    cd = g.consensus_distance()
    with torch.no_grad():
        acc = (model(ds.x_test.to(device)).argmax(1).cpu() == ds.y_test).float().mean()
    print(f"rank {rank}: test acc {100 * float(acc):.2f}%, consensus distance {cd:.3g}, "
          f"{g.bits_per_element():.3f} bits/param/step, {g.bytes_sent} bytes sent")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

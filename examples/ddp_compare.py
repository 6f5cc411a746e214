"""Data-parallel training with compressed gradients: this package's DDP hooks against
uncompressed DDP, torch's fp16_compress_hook and powerSGD_hook (rank 1 and 4).

    PYTHONPATH=. python examples/ddp_compare.py --seeds 0 1 2 --out docs/ddp-hooks

Runs n gloo processes on this machine (one process group, every configuration in turn,
each from the same initial model and data), trains an MLP on digits and on the
synthetic logistic task, and writes OUT.json and OUT.md: test accuracy (mean and range
over seeds) and the bytes each rank sends per step.  ``--resnet-bytes`` adds the bytes
per step of every configuration on ResNet-20 (0.27M parameters; a few steps on random
CIFAR-shaped tensors: bytes do not depend on the data).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time

import torch

# label -> (DataParallel compressor, error feedback or None for torch's hooks)
CONFIGS = {
    "uncompressed": ("none", None),
    "fp16 (torch)": ("fp16", None),
    "PowerSGD r1 (torch)": ("powersgd:1", None),
    "PowerSGD r4 (torch)": ("powersgd:4", None),
    "QSGD 8 bit": ("qsgd:8", False),
    "QSGD 4 bit": ("qsgd:4", False),
    "QSGD 4 bit + EF": ("qsgd:4", True),
    "scaled sign + EF": ("sign", True),
    "top-1% + EF": ("topk:0.01", True),
    "top-10% + EF": ("topk:0.1", True),
    "random-1% + EF": ("randomk:0.01", True),
    "random-10% + EF": ("randomk:0.1", True),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_one(args, rank, world, ds, label, seed):
    from moniqua_kernels import data, gossip
    spec, ef = CONFIGS[label]
    model = data.make_model("mlp", ds.n_features, ds.n_classes, seed=seed, hidden=64)
    dp = gossip.DataParallel(model, spec, seed=seed, error_feedback=ef)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    shard = data.shard(ds.x_train.shape[0], world, seed)[rank]
    gen = torch.Generator().manual_seed(7919 * seed + rank)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = shard[torch.randint(shard.numel(), (args.batch_size,), generator=gen)]
        loss = torch.nn.functional.cross_entropy(dp.module(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dp.step()
    with torch.no_grad():
        logits = model(ds.x_test)
        acc = float((logits.argmax(1) == ds.y_test).float().mean())
        test_loss = float(torch.nn.functional.cross_entropy(logits, ds.y_test))
    return {"dataset": ds.name, "config": label, "seed": seed, "test_accuracy": acc,
            "test_loss": test_loss,
            "bytes_per_step": dp.bytes_sent / dp.step_count,
            "last_bytes_per_step": dp.last_bytes_sent, "n_params": dp.numel,
            "wall_s": time.perf_counter() - t0}


def _resnet_bytes(rank, configs):
    from moniqua_kernels import gossip
    from moniqua_kernels.models import ResNet20
    out = []
    for label in configs:
        spec, ef = CONFIGS[label]
        if spec.startswith("powersgd"):
            spec += ":2"  # start compressing at step 2 so a few steps reach it
        torch.manual_seed(0)
        model = ResNet20()
        dp = gossip.DataParallel(model, spec, error_feedback=ef)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(4):
            x = torch.randn(4, 3, 32, 32, generator=gen)
            y = torch.randint(0, 10, (4,), generator=gen)
            torch.nn.functional.cross_entropy(dp.module(x), y).backward()
            dp.step()
        out.append({"config": label, "bytes_per_step": dp.last_bytes_sent,
                    "n_params": dp.numel})
    return out


def _worker(rank, world, port, args, q):
    import torch.distributed as dist

    from moniqua_kernels import data
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=120))
        rows = []
        for name in args.datasets:
            for seed in args.seeds:
                ds = data.load(name, seed)
                for label in args.configs:
                    row = _run_one(args, rank, world, ds, label, seed)
                    if rank == 0:
                        print(f"{name:9s} seed {seed} {label:22s} "
                              f"acc {100 * row['test_accuracy']:6.2f}%  "
                              f"loss {row['test_loss']:.4f}  "
                              f"{row['bytes_per_step']:9.0f} B/step  {row['wall_s']:5.1f} s",
                              file=sys.stderr, flush=True)
                    rows.append(row)
        resnet = _resnet_bytes(rank, args.configs) if args.resnet_bytes else []
        q.put((rank, {"rows": rows, "resnet": resnet}))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        q.put((rank, f"{type(exc).__name__}: {exc}"))


def _table(rows, datasets, configs, world):
    lines = ["| problem | configuration | test acc. (mean, min-max) | vs uncompressed (pts) "
             "| test loss | bytes / rank / step | x fewer | bits / param / step |",
             "|---|---|---|---|---|---|---|---|"]
    for name in datasets:
        base = [r for r in rows if r["dataset"] == name and r["config"] == "uncompressed"]
        base_acc = sum(r["test_accuracy"] for r in base) / len(base) if base else None
        base_bytes = base[0]["bytes_per_step"] if base else None
        for label in configs:
            sel = [r for r in rows if r["dataset"] == name and r["config"] == label]
            if not sel:
                continue
            accs = [100 * r["test_accuracy"] for r in sel]
            mean = sum(accs) / len(accs)
            loss = sum(r["test_loss"] for r in sel) / len(sel)
            b = sum(r["bytes_per_step"] for r in sel) / len(sel)
            delta = f"{round(mean - 100 * base_acc, 2) + 0.0:+.2f}" if base_acc is not None else ""
            fewer = f"{base_bytes / b:.1f}" if base_bytes else ""
            bits = 8 * b / sel[0]["n_params"]
            lines.append(f"| {name} ({sel[0]['n_params']} params) | {label} | {mean:.2f}% "
                         f"({min(accs):.2f}-{max(accs):.2f}) | {delta} | {loss:.4f} | {b:,.0f} "
                         f"| {fewer} "
                         f"| {bits:.3f} |")
    return "\n".join(lines)


def _resnet_table(resnet):
    base = next((r["bytes_per_step"] for r in resnet if r["config"] == "uncompressed"), None)
    lines = ["| configuration | bytes / rank / step | x fewer | bits / param / step |",
             "|---|---|---|---|"]
    for r in resnet:
        fewer = f"{base / r['bytes_per_step']:.1f}" if base else ""
        lines.append(f"| {r['config']} | {r['bytes_per_step']:,} | {fewer} | "
                     f"{8 * r['bytes_per_step'] / r['n_params']:.3f} |")
    return "\n".join(lines)


def _text(cmd, args, rows, resnet) -> str:
    text = (f"{args.workers} ranks (gloo), {args.steps} steps, batch {args.batch_size} per "
            f"rank, lr {args.lr}, plain SGD, seeds {args.seeds}; produced by `{cmd}`.  Test "
            "accuracy and loss of the (single) model on the held-out split, mean over seeds; "
            "bytes: what one rank sends per step (ring all-reduce 2 (n - 1) / n x payload, "
            "all-gather (n - 1) x payload), mean over steps; bits / param: 8 x bytes / "
            "parameters.\n\n" + _table(rows, args.datasets, args.configs, args.workers))
    if resnet:
        text += ("\n\nResNet-20 (bytes only, the same ranks, after PowerSGD's start step):"
                 "\n\n" + _resnet_table(resnet))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "synthetic"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                    metavar="CONFIG")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--resnet-bytes", action="store_true")
    ap.add_argument("--out", help="write OUT.json and OUT.md")
    ap.add_argument("--render", metavar="JSON",
                    help="only rewrite the Markdown of an earlier run's JSON (next to it)")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        text = _text(saved["command"], argparse.Namespace(**saved["args"]), saved["rows"],
                     saved["resnet"])
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(text + "\n")
        print(text)
        return 0
    if args.workers < 2 or args.steps < 1 or args.batch_size < 1:
        ap.error("--workers must be >= 2, --steps and --batch-size >= 1")
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    q, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args.workers, port, args, q), daemon=True)
             for r in range(args.workers)]
    for p in procs:
        p.start()
    import queue as queue_mod
    results = {}
    while len(results) < len(procs):
        try:
            rank, value = q.get(timeout=5)
            results[rank] = value
        except queue_mod.Empty:
            for r, p in enumerate(procs):  # a rank that died without a report
                if not p.is_alive() and r not in results:
                    results[r] = f"exited with code {p.exitcode} without a report"
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    failed = {r: v for r, v in results.items() if isinstance(v, str)}
    if failed:
        print("; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items())), file=sys.stderr)
        return 1
    rows, resnet = results[0]["rows"], results[0]["resnet"]
    cmd = "PYTHONPATH=. python examples/ddp_compare.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = _text(cmd, args, rows, resnet)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump({"command": cmd, "args": vars(args), "rows": rows, "resnet": resnet,
                       "torch": torch.__version__}, f, indent=2)
        with open(args.out + ".md", "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

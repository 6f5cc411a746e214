"""Command line: ``python -m moniqua_kernels {demo,bench,train,netbench}`` (or ``moniqua-kernels``).

  demo   the simulator on an embedded dataset: 8 workers on a ring, full precision
         against compressed algorithms; a table, a PNG plot, optional JSON.
  bench  microbenchmarks of the kernels on whatever backends and devices are here.
  train  multi-process training under torchrun (gloo or NCCL).
  netbench  train over real links shaped in network namespaces (root; see netbench/).

Bad flags exit with code 2 and a message that says what to do.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .gossip import topology
from .progress import Progress

DEMO_ALGORITHMS = ("dpsgd", "allreduce", "moniqua-1bit", "moniqua-2bit", "choco-sign",
                   "choco-qsgd4", "squarm")


class UsageError(Exception):
    """A bad flag value found after parsing: reported like argparse's errors (exit 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str, low_ok: bool = False) -> float:
    what = "a number >= 0" if low_ok else "a positive number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (value >= 0 if low_ok else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    return _positive_float(text, low_ok=True)


# ------------------------------------------------------------------------------- demo

def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="compare algorithms in the simulator on an embedded dataset",
        description="Simulate n workers in one process on scikit-learn's digits (or a "
                    "seeded synthetic logistic-regression problem) and compare full-precision "
                    "D-PSGD and all-reduce with Moniqua, CHOCO-SGD and SQuARM-SGD.")
    p.add_argument("--dataset", choices=("digits", "synthetic"), default="digits")
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and streams")
    p.add_argument("--workers", type=_positive_int, default=8)
    p.add_argument("--topology", default="ring",
                   help=topology.SPEC_HELP)
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default 600, or 150 with --quick)")
    p.add_argument("--lr", type=_positive_float, default=0.1)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--algorithms", default=",".join(DEMO_ALGORITHMS),
                   help="comma-separated configurations (see --list)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument("--quick", action="store_true",
                   help="a short run: 150 steps instead of 600 (about 30 s on 2 cores)")
    p.add_argument("--link-gbps", type=_positive_float, default=1.0,
                   help="link bandwidth for the communication-time estimate (Gbit/s)")
    p.add_argument("--latency-us", type=_non_negative_float, default=50.0,
                   help="per-message latency for the estimate (microseconds)")
    p.add_argument("--json", metavar="PATH", help="write the results table as JSON")
    p.add_argument("--plot", metavar="PATH", default="moniqua_demo.png",
                   help="PNG plot of loss vs step and vs MB sent "
                        "(default %(default)s; '' for none)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from . import simulate

    configs = simulate.list_configs()
    if args.list:
        for name, text in configs.items():
            print(f"{name:22s} {text}")
        return 0
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in names if a not in configs]
    if unknown or not names:
        raise UsageError(f"unknown configuration(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(configs)} (see demo --list)")
    try:
        topology.make(args.topology, args.workers)
    except ValueError as exc:   # TopologyError: before any worker starts
        raise UsageError(f"--topology {args.topology!r}: {exc}") from None
    from .train import unwritable
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        problem = unwritable(path) if path else None
        if problem:
            raise UsageError(f"{flag} {path!r}: {problem}")
    steps = args.steps or (150 if args.quick else 600)
    network = simulate.NetworkModel(latency_s=args.latency_us * 1e-6,
                                    bandwidth_Bps=args.link_gbps * 1e9 / 8)
    progress = Progress(steps * len(names), not args.no_progress)
    results = []
    try:
        for name in names:
            progress.label(name)
            result = simulate.run(
                name, n_workers=args.workers, topology=args.topology, dataset=args.dataset,
                steps=steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                network=network, progress=lambda step, total, loss: progress.update(loss))
            results.append(result)
    finally:
        progress.close()
    rows = [_demo_row(r, configs[r.config]) for r in results]
    _print_table(rows, args, steps)
    if args.json:
        _write_json(args.json, {"dataset": args.dataset, "seed": args.seed,
                                "workers": args.workers, "topology": args.topology,
                                "steps": steps, "link_gbps": args.link_gbps,
                                "results": rows})
        print(f"wrote {args.json}")
    if args.plot:
        _plot_demo(results, args.plot, f"{args.dataset}, {args.workers} workers, "
                                        f"{args.topology}, seed {args.seed}")
        print(f"wrote {args.plot}")
    return 0


def _demo_row(r, description: str) -> dict:
    return {"algorithm": r.config, "description": description,
            "bits": r.bits_per_element,
            "test_accuracy": r.test_accuracy,
            "test_accuracy_workers_mean": r.test_accuracy_mean,
            "final_loss": r.losses[-1] if r.losses else float("nan"),
            "bytes_per_worker_step": r.bytes_per_worker_per_step,
            "mb_sent_per_worker": sum(r.bytes_sent) / len(r.bytes_sent) / 1e6,
            "wall_time_s": r.wall_time_s,
            "est_comm_time_s": r.est_comm_time_s,
            "consensus_distance": r.consensus_distance,
            "theta_violations": r.theta_violations,
            "n_params": r.n_params}


def _print_table(rows, args, steps) -> None:
    print(f"\n{args.dataset}: {args.workers} workers on a {args.topology}, {steps} steps, "
          f"batch {args.batch_size}, lr {args.lr}; communication time estimated at "
          f"{args.link_gbps:g} Gbit/s and {args.latency_us:g} us per message\n")
    head = (f"{'algorithm':14s} {'test acc':>8s} {'workers':>8s} {'bits/param':>10s} "
            f"{'bytes/step':>11s} "
            f"{'MB sent':>8s} {'wall s':>7s} {'comm s (est)':>12s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['algorithm']:14s} {100 * r['test_accuracy']:7.2f}% "
              f"{100 * r['test_accuracy_workers_mean']:7.2f}% {r['bits']:10.3f} "
              f"{r['bytes_per_worker_step']:11.0f} {r['mb_sent_per_worker']:8.3f} "
              f"{r['wall_time_s']:7.2f} {r['est_comm_time_s']:12.4f}")
    print("\ntest acc: the averaged model (mean of the workers' parameters) on the held-out "
          "split; workers: mean of the workers' own models' accuracy; bits/param: bits each "
          "worker sends per step per model parameter; MB sent: per worker, whole run.")


def _write_json(path: str, obj) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _plot_demo(results, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        losses = _smooth(r.losses)
        steps = list(range(1, len(losses) + 1))
        per_step_mb = r.bytes_per_worker_per_step / 1e6
        ax1.plot(steps, losses, label=f"{r.config} ({r.bits_per_element:.2f} bits)")
        ax2.plot([s * per_step_mb for s in steps], losses, label=r.config)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (mean over workers, smoothed)")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("MB sent per worker")
    ax2.set_xscale("symlog", linthresh=1e-2)
    ax2.set_yscale("log")
    ax2.set_ylabel("training loss")
    fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values, window: int = 20):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


# ---------------------------------------------------- bench, train, netbench: delegated

# These commands own their flags (argparse's REMAINDER would not pass a leading --flag
# through), so main() hands them the rest of the command line; the subparsers below only
# list them in --help.
_DELEGATED = {
    "bench": "kernel microbenchmarks on the backends present",
    "train": "multi-process training under torchrun",
    "netbench": "training over shaped links in network namespaces (root)",
}


def _run_delegated(command: str, rest: list) -> int:
    import importlib
    module = importlib.import_module(f".{command}", __package__)
    result = module.main(rest)  # bench returns its JSON document, the others an exit code
    return result if isinstance(result, int) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moniqua-kernels",
        description="Compressed communication for decentralized SGD: demo, bench, train, "
                    "netbench.")
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench,train,netbench}")
    sub.required = True
    _add_demo(sub)
    for command, summary in _DELEGATED.items():
        sub.add_parser(command, help=summary, add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _run_delegated(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    except FileNotFoundError as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Convergence table: 8 simulated workers on a ring, every algorithm, two problems.

    PYTHONPATH=. python examples/convergence.py --seeds 0 1 2 --jobs 2
                                                   # writes docs/convergence.md

Accuracy is the averaged model's test accuracy (mean of the 8 workers' parameters),
averaged over the seeds (each seed: its own data split, shards, init and streams);
'workers' is the mean of the workers' own test accuracies.  Bits per parameter per step
are the exact bits each worker sent per step (theta checks included) divided by the
number of parameters.  A run whose models became non-finite (the ops refuse those) is
reported as diverged.
"""
import argparse
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import warnings

import torch

from moniqua_kernels import simulate

# (group, configs): matched bits per parameter, as the papers compare them
GROUPS = [
    ("full precision", ["dpsgd", "allreduce", "adpsgd"]),
    ("about 1 bit", ["moniqua-1bit", "moniqua-adpsgd-1bit", "choco-sign", "dcd-sign",
                     "deepsqueeze-sign", "ecd-qsgd2"]),
    ("about 4 bits", ["moniqua-4bit", "moniqua-d2-4bit", "moniqua-adpsgd-4bit", "choco-qsgd4",
                      "dcd-qsgd4", "ecd-qsgd4", "deepsqueeze-qsgd4", "squarm"]),
    ("other widths", ["moniqua-2bit", "moniqua-8bit"]),
]
CONFIGS = [c for _, names in GROUPS for c in names]
PROBLEMS = [  # (dataset, model, steps, lr, batch size)
    ("digits", "mlp", 600, 0.1, 16),
    ("synthetic", "logistic", 600, 0.1, 16),
]


def _job(args):
    dataset, model, steps, lr, bs, name, seed = args
    warnings.simplefilter("ignore")  # backend fallback notice, theta warnings (counted)
    torch.set_num_threads(1)
    try:
        r = simulate.run(name, n_workers=8, topology="ring", dataset=dataset, model=model,
                         steps=steps, lr=lr, batch_size=bs, seed=seed)
    except ValueError as exc:  # non-finite models: the ops refuse to encode them
        if "non-finite" not in str(exc):
            raise
        return args, None
    loss = r.losses[-1]
    if not math.isfinite(loss) or loss > 1e6:
        return args, None
    return args, (r.test_accuracy, r.test_accuracy_mean, loss, r.bits_per_element,
                  r.theta_violations, r.est_comm_time_s, r.wall_time_s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/convergence.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    args = ap.parse_args()
    jobs = [(d, m, s, lr, bs, name, seed) for d, m, s, lr, bs in PROBLEMS for name in CONFIGS
            for seed in args.seeds]
    res = {}
    t0 = time.time()
    with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
        for (job, out) in ex.map(_job, jobs):
            res[job] = out
            print(f"{job[0]:9s} {job[5]:22s} seed {job[6]}: " + (
                "diverged" if out is None else
                f"acc={100 * out[0]:6.2f}% bits={out[3]:7.3f} viol={out[4]} ({out[6]:.1f} s)"),
                flush=True)
    command = "PYTHONPATH=. python " + " ".join(["examples/convergence.py"] + sys.argv[1:])
    lines = [
        "# Convergence (simulator)", "",
        f"Produced by `{command}` (torch {torch.__version__}, {platform.machine()}, "
        f"{time.time() - t0:.0f} s); every number below is that command's output.", "",
        "8 workers on a ring (Metropolis-Hastings weights 1/3), IID shards, 600 steps, "
        "batch 16 per worker, lr 0.1, plain SGD except SQuARM (Nesterov 0.9).  Test "
        "accuracy: the averaged model (mean of the workers' parameters) on the held-out "
        f"split, mean over seeds {args.seeds} (min-max in brackets); 'workers': mean of "
        "each worker's own model.  Bits: exact bits each worker sends per step (to both "
        "neighbours together) per model parameter, including Moniqua's theta checks; "
        "full-precision gossip is 2 x 32 = 64.  Est. comm: the simulator's network model "
        "(50 us per round, 10 Gbit/s per worker), whole run, mean over seeds.  'diverged': "
        "the models became non-finite or the loss exceeded 1e6 (in that many of the seeds; "
        "the other columns are over the seeds that did not).", "",
    ]
    summary = {}
    for d, m, s, lr, bs in PROBLEMS:
        base = statistics.mean(res[(d, m, s, lr, bs, "dpsgd", k)][0] for k in args.seeds)
        lines += [f"## {d} ({m})", "",
                  "| group | config | test acc. | vs D-PSGD (pts) | workers | final loss | "
                  "bits / param / step | theta viol. | est. comm (ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for group, names in GROUPS:
            for name in names:
                outs = [res[(d, m, s, lr, bs, name, k)] for k in args.seeds]
                ok = [o for o in outs if o is not None]
                bad = len(outs) - len(ok)
                if not ok:
                    lines.append(f"| {group} | {name} | diverged ({bad}/{len(outs)}) | | | | | | |")
                    summary[(d, name)] = None
                    continue
                acc = [o[0] for o in ok]
                mean = lambda i: statistics.mean(o[i] for o in ok)  # noqa: E731
                summary[(d, name)] = (mean(0), mean(0) - base, mean(3), bad)
                lines.append(
                    f"| {group} | {name} | {100 * mean(0):.2f}% [{100 * min(acc):.2f}-"
                    f"{100 * max(acc):.2f}]{f' (diverged {bad}/{len(outs)})' if bad else ''} | "
                    f"{100 * (mean(0) - base):+.2f} | {100 * mean(1):.2f}% | {mean(2):.3f} | "
                    f"{mean(3):.3f} | {sum(o[4] for o in ok)} | {1000 * mean(5):.1f} |")
        lines.append("")
    lines += ["## Orderings within each bit group (mean accuracy, best first)", ""]
    for d, *_ in PROBLEMS:
        for group, names in GROUPS[1:3]:
            ranked = sorted(names, key=lambda n: -1 if summary[(d, n)] is None
                            else summary[(d, n)][0], reverse=True)
            lines.append(f"- {d}, {group}: " + " > ".join(
                f"{n} ({'diverged' if summary[(d, n)] is None else f'{100 * summary[(d, n)][0]:.2f}%'})"
                for n in ranked))
    within = [f"{d}/{n}" for (d, n), v in summary.items()
              if v is None or v[1] < -0.01 or v[3]]
    lines += ["", "Configurations more than 1 point below D-PSGD (or diverged in a seed): "
              + (", ".join(within) if within else "none") + ".", ""]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                         "convergence-notes.md")
    lines += open(notes).read().splitlines()
    lines += ["", "Configs (`moniqua_kernels.simulate.CONFIGS`):", ""]
    lines += [f"- `{k}`: {v}" for k, v in simulate.list_configs().items() if k in CONFIGS]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()

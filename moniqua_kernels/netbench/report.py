"""Turn train's summaries into netbench's result rows, table and plot."""
from __future__ import annotations

import os
from typing import Optional

PARTS = ("compute", "encode", "wire", "decode_mix")


def time_to_target(history: list[dict], target: float) -> Optional[float]:
    """Training seconds at the first evaluation whose workers' mean test accuracy
    reaches target (evaluations happen every --eval-every steps), or None."""
    for row in history:
        acc = row.get("test_accuracy_workers_mean")
        if acc is not None and acc >= target:
            return row["wall_s"]
    return None


def result_row(name: str, out: dict, *, rate_mbit: float, delay_ms: float,
               measured_mbit: float, target: float, qdisc: list[dict]) -> dict:
    s, history = out["summary"], out["history"]
    steps = s["steps"]
    wall = s["wall_time_s"]
    timing = s["timing_s"] or {}
    per_step = {k: timing.get(k, 0.0) / steps for k in PARTS}
    step_s = wall / steps
    bytes_step = s["bytes_sent_rank0"] / steps
    goodput = 8 * bytes_step / step_s / 1e6
    return {
        "algorithm": name, "rate_mbit": rate_mbit, "delay_ms": delay_ms,
        "workers": s["workers"], "steps": steps, "wall_s": wall,
        "steps_per_s": steps / wall, "time_to_target_s": time_to_target(history, target),
        "target_accuracy": target,
        "final_test_accuracy": s["test_accuracy_workers_mean"],
        "final_test_accuracy_averaged_model": s["test_accuracy_averaged_model"],
        "bytes_per_worker_step": bytes_step,
        "breakdown_s": per_step,
        "step_s": step_s,
        "unaccounted_s": step_s - sum(per_step.values()),
        "goodput_mbit": goodput,
        "link_utilization": goodput / measured_mbit if measured_mbit else None,
        "qdisc_dropped": sum(q["dropped"] for q in qdisc),
        "n_params": s["n_params"],
        "curve": [{k: row[k] for k in ("step", "wall_s", "loss", "test_accuracy_workers_mean",
                                       "test_loss_workers_mean") if k in row}
                  for row in history],
    }


def _fmt_time(t: Optional[float]) -> str:
    return "never" if t is None else f"{t:.1f}"


def table(results: list[dict], links: list[dict]) -> str:
    """A plain-text table, one block per rate."""
    lines = []
    for link in links:
        rate = link["rate_mbit"]
        rows = [r for r in results if r["rate_mbit"] == rate and r["delay_ms"] == link["delay_ms"]]
        if not rows:
            continue
        target = rows[0]["target_accuracy"]
        lines.append(f"\nlink {rate:g} Mbit/s configured, {link['measured_mbit']:.1f} Mbit/s "
                     f"measured (TCP payload, mean of {len(link['measured_mbit_per_link'])} "
                     f"links)" + (f", {link['delay_ms']:g} ms delay" if link["delay_ms"] else ""))
        head = (f"{'algorithm':14s} {'steps/s':>7s} {'to ' + format(100 * target, 'g') + '% s':>9s}"
                f" {'final acc':>9s} {'KB/step':>9s} {'Mbit/s':>7s} {'% link':>6s} "
                f"{'compute':>8s} {'encode':>8s} {'wire':>8s} {'dec+mix':>8s} {'other':>7s}")
        lines += [head, "-" * len(head)]
        for r in rows:
            b = r["breakdown_s"]
            util = r["link_utilization"]
            lines.append(
                f"{r['algorithm']:14s} {r['steps_per_s']:7.2f} {_fmt_time(r['time_to_target_s']):>9s}"
                f" {100 * r['final_test_accuracy']:8.2f}% {r['bytes_per_worker_step'] / 1e3:9.1f}"
                f" {r['goodput_mbit']:7.1f} {100 * util if util else 0:5.0f}%"
                + "".join(f" {1e3 * b[k]:8.1f}" for k in PARTS)
                + f" {1e3 * r['unaccounted_s']:7.1f}")
    lines.append("\nsteps/s and times exclude the test evaluations; final acc: mean over the "
                 "workers of their own model's test accuracy; KB/step: payload each worker "
                 "sends per step; Mbit/s: that payload over the step time (goodput), % link: "
                 "of the measured link; compute/encode/wire/dec+mix/other: ms per step, mean "
                 "over the ranks (other: step time not in any part).")
    return "\n".join(lines)


def markdown(results: list[dict], links: list[dict]) -> str:
    """The same numbers as a Markdown table (for the README)."""
    out = ["| link (measured) | algorithm | steps/s | time to target (s) | final acc. | "
           "KB / worker / step | goodput Mbit/s (% link) | compute | encode | wire | "
           "decode+mix | other |", "|" + "---|" * 12]
    measured = {(l["rate_mbit"], l["delay_ms"]): l["measured_mbit"] for l in links}
    for r in results:
        b = r["breakdown_s"]
        util = r["link_utilization"] or 0
        out.append(f"| {r['rate_mbit']:g} ({measured[(r['rate_mbit'], r['delay_ms'])]:.0f}) "
                   f"| {r['algorithm']} | {r['steps_per_s']:.2f} | "
                   f"{_fmt_time(r['time_to_target_s'])} | {100 * r['final_test_accuracy']:.1f}% "
                   f"| {r['bytes_per_worker_step'] / 1e3:.1f} | {r['goodput_mbit']:.1f} "
                   f"({100 * util:.0f}%) | "
                   + " | ".join(f"{1e3 * b[k]:.1f}" for k in PARTS)
                   + f" | {1e3 * r['unaccounted_s']:.1f} |")
    return "\n".join(out)


def plot(results: list[dict], links: list[dict], path: str, title: str) -> None:
    """Test loss and test accuracy (means over the workers' own models) against training
    seconds, one line per algorithm, one row of panels per link.  The test loss, not the
    minibatch loss: one batch of 32 per logged step is too noisy to compare lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(l["rate_mbit"], l["delay_ms"]) for l in links]
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 4 * len(keys)), squeeze=False)
    for (rate, delay), (ax_loss, ax_acc) in zip(keys, axes):
        for r in (r for r in results if (r["rate_mbit"], r["delay_ms"]) == (rate, delay)):
            loss = [(c["wall_s"], c["test_loss_workers_mean"]) for c in r["curve"]
                    if "test_loss_workers_mean" in c and c["wall_s"] > 0]
            acc = [(c["wall_s"], c["test_accuracy_workers_mean"]) for c in r["curve"]
                   if "test_accuracy_workers_mean" in c and c["wall_s"] > 0]
            if loss:
                ax_loss.plot(*zip(*loss), label=r["algorithm"])
            if acc:
                ax_acc.plot(*zip(*acc), label=r["algorithm"])
        label = f"{rate:g} Mbit/s" + (f", {delay:g} ms" if delay else "")
        ax_loss.set_title(f"test loss (mean over workers), {label}")
        ax_acc.set_title(f"test accuracy (mean over workers), {label}")
        target = next((r["target_accuracy"] for r in results), None)
        if target is not None:
            ax_acc.axhline(target, color="grey", linestyle=":", linewidth=1)
        for ax in (ax_loss, ax_acc):
            ax.set_xscale("log")
            ax.set_xlabel("wall-clock seconds of training (log scale)")
            ax.grid(True, which="both", alpha=0.3)
        ax_loss.set_yscale("log")
        ax_acc.set_ylim(0, 1)
        ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

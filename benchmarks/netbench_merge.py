"""Merge netbench JSON files (one per rate, run when the shared machine was quiet)
into one JSON, Markdown table and plot.

    python benchmarks/netbench_merge.py a.json b.json c.json --json all.json \\
        --markdown all.md --plot all.png

Runs are kept apart by their rate; each keeps its own command and machine record
(load averages at start and end), listed under "runs".
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from moniqua_kernels.netbench import report
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+")
    p.add_argument("--json", required=True)
    p.add_argument("--markdown")
    p.add_argument("--plot")
    args = p.parse_args()
    runs = [json.load(open(path)) for path in args.inputs]
    settings = {k: v for k, v in runs[0]["settings"].items() if k != "threads_per_rank"}
    for path, run in zip(args.inputs, runs):
        other = {k: v for k, v in run["settings"].items() if k != "threads_per_rank"}
        if other != settings:
            p.error(f"{path} was run with other settings: {other} != {settings}")
    links = [link for run in runs for link in run["links"]]
    results = [row for run in runs for row in run["results"]]
    keys = [(link["rate_mbit"], link["delay_ms"]) for link in links]
    if len(set(keys)) != len(keys):
        p.error("two inputs measured the same rate and delay")
    merged = {"runs": [{"file": os.path.basename(path), "command": run["command"],
                        "machine": run["machine"]} for path, run in zip(args.inputs, runs)],
              "settings": runs[0]["settings"], "links": links, "results": results}
    with open(args.json, "w") as f:
        json.dump(merged, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(results, links) + "\n")
    if args.plot:
        s = settings
        report.plot(results, links, args.plot,
                    f"{s['workers']} workers ({s['topology']}), {s['dataset']}/{s['model']} "
                    f"{s['n_params']} parameters, {s['steps']} steps, gloo over shaped veths")
    print(report.table(results, links))
    return 0


if __name__ == "__main__":
    sys.exit(main())

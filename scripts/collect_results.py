#!/usr/bin/env python
"""Collect run results into a markdown table (mean ± std over seeds) and a plot of the dev metric
against optimizer steps and against training wall time.

Reads the JSON files ``glue_study.py`` writes (``results``, ``timeline``) or plain ``run_glue.py`` output
folders (``all_results.json``, ``eval_timeline.json``, ``run_config.json``).

    python scripts/collect_results.py docs/results/glue/mmr-sweep --table docs/results/glue/mmr-sweep.md
    python scripts/collect_results.py docs/results/glue/mms-vs-random --plot docs/results/glue/mms-vs-random.png
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmr_transformers.glue import get_task  # noqa: E402


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for path in paths:
        files = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "all_results.json")):
            config = json.load(open(os.path.join(path, "run_config.json")))
            timeline_path = os.path.join(path, "eval_timeline.json")
            runs.append({"run": os.path.basename(path.rstrip("/")), "task": config["task"],
                         "arm": os.path.basename(path.rstrip("/")), "results": json.load(open(os.path.join(path, "all_results.json"))),
                         "timeline": json.load(open(timeline_path)) if os.path.exists(timeline_path) else []})
            continue
        runs.extend(json.load(open(f)) for f in files)
    return runs


def metric_names(task_name: str) -> list[str]:
    task = get_task(task_name)
    names = [f"eval_{m}" for m in task.metrics]
    if len(task.eval_splits) > 1:
        names += [f"eval_mm_{m}" for m in task.metrics]
    return names


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(runs: list[dict]) -> str:
    """One row per task × arm: each metric's mean ± std (×100) over seeds, and the seed count."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["arm"])].append(run)
    lines = []
    for task in sorted({t for t, _ in groups}):
        names = metric_names(task)
        lines += [f"\n**{task.upper()}**\n", "| arm | " + " | ".join(n.removeprefix("eval_") for n in names) + " | seeds |",
                  "|---|" + "---|" * (len(names) + 1)]
        for (t, arm), members in sorted(groups.items()):
            if t != task:
                continue
            cells = [mean_std([m["results"][n] for m in members]) for n in names]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(members)} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: str) -> None:
    """Dev metric against optimizer steps (left) and training seconds (right), a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    colors = {}
    for run in sorted(runs, key=lambda r: r["run"]):
        row = tasks.index(run["task"])
        metric = metric_names(run["task"])[0]
        points = [p for p in run["timeline"] if metric in p]
        if not points:
            continue
        color = colors.setdefault(run["arm"], f"C{len(colors)}")
        label = run["arm"] if not any(line.get_label() == run["arm"] for line in axes[row][0].lines) else None
        for col, x in enumerate(("step", "train_seconds")):
            axes[row][col].plot([p[x] for p in points], [p[metric] for p in points], "o-", color=color, alpha=0.7,
                                label=label if col == 0 else None, markersize=3)
        for col, xlabel in enumerate(("optimizer steps", "training wall time (s)")):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].set_ylabel(f"{run['task'].upper()} dev {metric.removeprefix('eval_')}")
            axes[row][col].grid(alpha=0.3)
        axes[row][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="folders of run JSON files, run JSON files, or run_glue output folders")
    parser.add_argument("--table", help="write the markdown table here (default: print it)")
    parser.add_argument("--plot", help="write a PNG plot here")
    args = parser.parse_args()
    runs = load_runs(args.paths)
    if not runs:
        raise SystemExit(f"no results found in {args.paths}")
    text = table(runs)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text)
    print(text)
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()

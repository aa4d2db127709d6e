#!/usr/bin/env python
"""Collect run results into a markdown table (mean ± std over seeds) and a plot of the dev metric
against optimizer steps and against training wall time.

Reads the JSON files ``benchmarks/study.py`` writes (``results``, ``timeline``) or plain ``run_glue.py``/``run_image.py``
output folders (``all_results.json``, ``eval_timeline.json``, ``run_config.json``; a folder named ``ARM-seedN`` is
seed N of arm ARM, any other name an arm of its own). With ``--reference ARM``, also
the time each arm took to reach that arm's mean final dev metric (``time_to_target``'s ``grid``: the first
evaluation reaching it).

    python benchmarks/collect_results.py docs/results/mmr-sweep --table docs/results/mmr-sweep.md
    python benchmarks/collect_results.py docs/results/mms-vs-random --reference random --plot docs/results/mms-vs-random.png

With ``--paired-against ARM``, also each arm's seed-paired difference from that arm (runs named ``...-seedN``):
mean, 95% confidence interval, seeds ahead, and two-sided p-values of the paired t-test and the exact sign-flip test.

    python benchmarks/collect_results.py docs/results/mmr-banking77 --paired-against alpha0

With ``--geometry``, also the last evaluation's margin diagnostics per arm (mean over the seeds all arms have; runs with
``--margin_diagnostics``): minimal margin score quantiles, the share within 0.1 of a boundary, the largest feature
norm, the mean weight gap ``||W[y] - W[m]||²`` and R's value at evaluation, ``mean gap² · max ||phi||²``.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import re
import statistics
from collections import defaultdict

from scipy import stats

from mmr_transformers.recipes.glue import get_task

from common import time_to_target


def load_runs(paths: list[str]) -> list[dict]:
    """The runs of ``paths``; the same run (task, arm, name) found twice, e.g. a study's CPU and GPU folders
    passed together, is refused rather than counted twice, and so is a seed whose arms ran on two machines."""
    runs, sources, seed_sources = [], {}, {}  # (task, arm, run) and (task, arm, seed) → the file that holds it
    for path in paths:
        files = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "all_results.json")):
            config = json.load(open(os.path.join(path, "run_config.json")))
            task = config.get("task") or config.get("image", {}).get("dataset")  # run_glue.py's or run_image.py's
            if task is None:
                raise SystemExit(f"{path}: its run_config.json names no task (run_glue.py's 'task' or run_image.py's "
                                 "'image.dataset'); collect study JSONs (benchmarks/study.py) instead")
            timeline_path = os.path.join(path, "eval_timeline.json")
            name = os.path.basename(path.rstrip("/"))
            loaded = [(path, {"run": name, "task": task, "arm": re.sub(r"-seed\d+$", "", name),
                              "results": json.load(open(os.path.join(path, "all_results.json"))),
                              "timeline": json.load(open(timeline_path)) if os.path.exists(timeline_path) else []})]
        else:
            loaded = [(f, json.load(open(f))) for f in files]
        for source, run in loaded:
            key = (run["task"], run["arm"], run["run"])
            if key in sources:
                raise SystemExit(f"run {run['run']!r} ({run['task']}, arm {run['arm']!r}) is in both {sources[key]} and "
                                 f"{source}: pass one of them (each seed's runs from one machine)")
            seed = seed_in_name(run)
            if seed is not None and (run["task"], run["arm"], seed) in seed_sources:
                raise SystemExit(f"{source} and {seed_sources[run['task'], run['arm'], seed]} are both seed {seed} of "
                                 f"{run['task']}'s arm {run['arm']!r}: a seed is one run of an arm; pass one of them")
            for name in metric_names(run["task"]):
                value = run["results"].get(name)
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise SystemExit(f"{source}: its {name} is {value!r}, not a number: a diverged or unfinished run "
                                     "cannot enter a mean; rerun it or leave its file out")
            sources[key] = seed_sources[run["task"], run["arm"], seed] = source
            runs.append(run)
    refuse_seeds_from_two_machines(runs)
    return runs


def machine(run: dict) -> str:
    """The device the run's record names (``benchmarks/study.py`` records it; older records and run folders do not)."""
    return run.get("device") or "an unrecorded machine"


def machines_by_seed(runs: list[dict], task: str) -> dict[int | None, set[str]]:
    seeds = defaultdict(set)
    for run in runs:
        if run["task"] == task:
            seeds[seed_in_name(run)].add(machine(run))
    return seeds


def refuse_seeds_from_two_machines(runs: list[dict]) -> None:
    """A study may continue on another machine seed by seed (the same run differs across machines by about a seed's
    noise), but one seed's arms must share a machine: a pair across machines would compare the machines as well."""
    for task in sorted({r["task"] for r in runs}):
        for seed, machines in machines_by_seed(runs, task).items():
            if seed is not None and len(machines) > 1:
                arms = {m: sorted(r["arm"] for r in runs if r["task"] == task and seed_in_name(r) == seed
                                  and machine(r) == m) for m in sorted(machines)}
                raise SystemExit(f"seed {seed} of {task} ran on several machines ("
                                 + "; ".join(f"{m}: {', '.join(a)}" for m, a in arms.items())
                                 + "): pass one machine's runs of each seed (e.g. its files by name), so every "
                                 "pair shares a machine")


def metric_names(task_name: str) -> list[str]:
    """The task's GLUE metrics (MNLI: matched and mismatched), or accuracy for an image task."""
    try:
        task = get_task(task_name)
    except ValueError:
        return ["eval_accuracy"]
    names = [f"eval_{m}" for m in task.metrics]
    if len(task.eval_splits) > 1:
        names += [f"eval_mm_{m}" for m in task.metrics]
    return names


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(runs: list[dict]) -> str:
    """One row per task × arm: each metric's mean ± std (×100) over its seeds, and the seeds; a note under a task
    whose arms ran on different seeds (their means are then not comparable: the paired table is)."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["arm"])].append(run)
    lines = []
    for task in sorted({t for t, _ in groups}):
        names = metric_names(task)
        lines += [f"\n**{task.upper()}**\n", "| arm | " + " | ".join(n.removeprefix("eval_") for n in names) + " | seeds |",
                  "|---|" + "---|" * (len(names) + 1)]
        seed_sets = set()
        for (t, arm), members in sorted(groups.items()):
            if t != task:
                continue
            cells = [mean_std([m["results"][n] for m in members]) for n in names]
            seeds = sorted(seed for seed in map(seed_in_name, members) if seed is not None)
            seed_sets.add(tuple(seeds))
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(members)}"
                         + (f" ({', '.join(map(str, seeds))})" if seeds else "") + " |")
        if len(seed_sets) > 1:
            lines.append("\nThe arms ran on different seeds, so their means differ by the seeds as well: compare "
                         "them seed by seed (`--paired-against`).")
        where = defaultdict(list)
        for seed, machines in sorted(machines_by_seed(runs, task).items(), key=lambda item: (item[0] is None, item[0] or 0)):
            for m in machines:
                where[m].append("unseeded" if seed is None else str(seed))
        if len(where) > 1:
            lines.append("\nRuns from several machines, each seed's arms on one: " + "; ".join(
                f"seed{'s' * (len(seeds) > 1)} {', '.join(seeds)} on {m}" for m, seeds in sorted(where.items())) + ".")
    return "\n".join(lines) + "\n"


def time_to_reference(runs: list[dict], reference: str) -> str:
    """Per task and arm: the steps and training seconds each run needed to first reach the reference arm's
    mean final dev metric (:func:`time_to_target`'s ``grid`` on its evaluations; ``-`` when it never did), and
    its dev metric at the reference's mean training time."""
    lines = []
    for task in sorted({r["task"] for r in runs}):
        metric = metric_names(task)[0]
        members = [r for r in runs if r["task"] == task]
        ref = [r for r in members if r["arm"] == reference and r["timeline"]]
        if not ref:
            continue
        target = statistics.mean(r["timeline"][-1][metric] for r in ref)
        ref_seconds = statistics.mean(r["timeline"][-1]["train_seconds"] for r in ref)
        lines += [f"\n**{task.upper()}**: target = {reference}'s mean final {metric.removeprefix('eval_')} "
                  f"{100 * target:.2f}, reached after its mean {ref_seconds:.0f} s of training\n",
                  "| arm | runs reaching the target | steps to target | seconds to target | seconds / reference's | "
                  f"{metric.removeprefix('eval_')} at {ref_seconds:.0f} s |", "|---|---|---|---|---|---|"]
        for arm in sorted({r["arm"] for r in members}):
            hits, at_budget = [], []  # (steps, seconds) to the target; the metric at the reference's seconds
            for run in (r for r in members if r["arm"] == arm and r["timeline"]):
                points = run["timeline"]
                steps, seconds = (time_to_target([(p[x], p[metric]) for p in points], target)["grid"]
                                  for x in ("step", "train_seconds"))
                if steps is not None:
                    hits.append((steps, seconds))
                within = [p for p in points if p["train_seconds"] <= ref_seconds]
                if within:
                    at_budget.append(within[-1][metric])
            n = len([r for r in members if r["arm"] == arm])
            steps = f"{statistics.mean(h[0] for h in hits):.0f}" if hits else "-"
            seconds = statistics.mean(h[1] for h in hits) if hits else None
            lines.append(f"| {arm} | {len(hits)}/{n} | {steps} | {f'{seconds:.0f}' if hits else '-'} | "
                         f"{f'{seconds / ref_seconds:.2f}' if hits else '-'} | "
                         f"{mean_std(at_budget) if at_budget else '-'} |")
    return "\n".join(lines) + "\n"


def seed_in_name(run: dict) -> int | None:
    """N of a run named ``...-seedN``, else None."""
    match = re.search(r"seed(\d+)$", run["run"])
    return None if match is None else int(match.group(1))


def seed_of(run: dict) -> int:
    seed = seed_in_name(run)
    if seed is None:
        raise SystemExit(f"run {run['run']!r} has no seed in its name (...-seedN): it cannot be paired")
    return seed


def sign_flip_p(differences: list[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) test: the share of the 2^n sign assignments whose mean is at
    least as far from 0 as the observed mean. With n seeds its smallest possible value is 2 / 2^n."""
    observed = abs(statistics.mean(differences)) - 1e-12
    flips = list(itertools.product((1, -1), repeat=len(differences)))
    return sum(abs(statistics.mean(s * d for s, d in zip(signs, differences))) >= observed for signs in flips) / len(flips)


def paired_differences(runs: list[dict], reference: str) -> str:
    """Per task, arm and metric: the seed-paired difference arm − reference in points (×100): its mean, the t-based
    95% confidence interval of the mean, the seeds where the arm is ahead (ties count as not ahead), and the two-sided
    p-values of the paired t-test and of :func:`sign_flip_p`. Only seeds both arms have are paired (each seed's runs
    share a machine: :func:`load_runs` refuses a seed split across machines)."""
    lines = []
    for task in sorted({r["task"] for r in runs}):
        names = metric_names(task)
        by_arm = defaultdict(dict)
        for run in (r for r in runs if r["task"] == task):
            by_arm[run["arm"]][seed_of(run)] = run["results"]
        if reference not in by_arm:
            continue
        lines += [f"\n**{task.upper()}**: paired difference against {reference} (points)\n",
                  "| arm | metric | seeds | mean difference | 95% CI | seeds ahead | paired t p | sign-flip p |",
                  "|---|---|---|---|---|---|---|---|"]
        for arm in sorted(a for a in by_arm if a != reference):
            seeds = sorted(set(by_arm[arm]) & set(by_arm[reference]))
            for name in names:
                d = [100 * (by_arm[arm][s][name] - by_arm[reference][s][name]) for s in seeds]
                if len(d) < 2:
                    lines.append(f"| {arm} | {name.removeprefix('eval_')} | {len(d)} | - | - | - | - | - |")
                    continue
                mean, sd = statistics.mean(d), statistics.stdev(d)
                sd = 0.0 if sd <= 1e-9 * max(1.0, abs(mean)) else sd  # equal differences that rounding made unequal
                half = stats.t.ppf(0.975, len(d) - 1) * sd / len(d) ** 0.5
                t_p = f"{stats.ttest_1samp(d, 0.0).pvalue:.3f}" if sd > 0 else ("1.000" if mean == 0 else "-")
                lines.append(f"| {arm} | {name.removeprefix('eval_')} | {len(d)} | {mean:+.2f} | "
                             f"[{mean - half:+.2f}, {mean + half:+.2f}] | {sum(x > 0 for x in d)}/{len(d)} | {t_p} | "
                             f"{sign_flip_p(d):.3f} |")
    return "\n".join(lines) + "\n"


GEOMETRY = (  # (column, value of the last evaluation's diagnostics record)
    ("median margin", lambda d: d["margin_quantiles"]["q50"]),
    ("5% margin", lambda d: d["margin_quantiles"]["q5"]),
    ("within 0.1", lambda d: d["within_epsilon"]["0.1"]),
    ("max ‖φ‖", lambda d: d["feature_norm_max"]),
    ("mean ‖W[y]−W[m]‖²", lambda d: d["weight_gap_sq_mean"]),
    ("R = gap² · max ‖φ‖²", lambda d: d["weight_gap_sq_mean"] * d["feature_norm_sq_max"]),
)


def geometry(runs: list[dict]) -> str:
    """Per task and arm, the mean of each :data:`GEOMETRY` value at the run's last evaluation over the seeds that
    every arm of the task has (so arms are compared on the same seeds)."""
    lines = []
    for task in sorted({r["task"] for r in runs}):
        by_arm = defaultdict(dict)
        for run in runs:
            if run["task"] == task and run.get("margin_diagnostics"):
                by_arm[run["arm"]][seed_of(run)] = run["margin_diagnostics"][-1]
        if not by_arm:
            continue
        shared = set.intersection(*(set(seeds) for seeds in by_arm.values()))
        without = sorted({r["arm"] for r in runs if r["task"] == task} - set(by_arm))
        note = f" Without diagnostics, so not in it: {', '.join(without)}." if without else ""
        if not shared:
            lines.append(f"\n**{task.upper()}**: no geometry table: no seed has margin diagnostics in every arm "
                         f"({'; '.join(f'{arm}: {sorted(seeds)}' for arm, seeds in sorted(by_arm.items()))}).{note}")
            continue
        by_arm = {arm: [seeds[s] for s in sorted(shared)] for arm, seeds in by_arm.items()}
        lines += [f"\n**{task.upper()}**: geometry at the last evaluation (mean over the {len(shared)} seeds every "
                  f"arm has){note}\n",
                  "| arm | seeds | " + " | ".join(name for name, _ in GEOMETRY) + " |",
                  "|---|---|" + "---|" * len(GEOMETRY)]
        for arm, records in sorted(by_arm.items()):
            values = [statistics.mean(value(d) for d in records) for _, value in GEOMETRY]
            lines.append(f"| {arm} | {len(records)} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
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
    parser.add_argument("--reference", help="arm whose final dev metric is the target of a time-to-target table")
    parser.add_argument("--paired-against", help="arm every other arm is compared with, seed by seed")
    parser.add_argument("--geometry", action="store_true", help="also the margin diagnostics of each arm's last evaluation")
    args = parser.parse_args()
    runs = load_runs(args.paths)
    if not runs:
        raise SystemExit(f"no results found in {args.paths}")
    text = table(runs)
    if args.reference:
        text += time_to_reference(runs, args.reference)
    if args.paired_against:
        text += paired_differences(runs, args.paired_against)
    if args.geometry:
        text += geometry(runs)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text)
    print(text)
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()

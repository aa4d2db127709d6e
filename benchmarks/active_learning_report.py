#!/usr/bin/env python
"""Tabulate and plot active-learning runs: the per-run JSONs that ``scripts/run_active_learning.py`` writes.

    python benchmarks/active_learning_report.py runs/active-learning/banking77 --full_accuracy "$FULL" --plot al.png

Runs with fewer rounds than the longest (in progress, cut short) are left out and named. Prints per strategy the
test accuracy at each number of labels spent (mean ± sample std over seeds, and the
seed count) and, given the accuracy of training on the whole pool (``--full_accuracy``), the labels each strategy
needed to reach ``--target_fraction`` of it: per seed, the first round reaching it (``time_to_target``'s
``grid``) and the log-linear interpolation between that round and the one before (mean over the seeds that
reached it), and the interpolated labels over random's on the same seed (mean and range; only seeds where
both reached the target after round 0); then each margin-based strategy (``MARGIN_BASED``) against every other
strategy, seed by seed (a seed where only one of the two reached the target counts for that one), and the issue's
goal checked: ``--goal_ratio`` (0.8) of random's labels or fewer on the seeds where both reached it and no seed
where only random did, and fewer than every probability-based strategy (``PROBABILITY_BASED``, this package's and
small-text's: a lower mean ratio and fewer labels on most seeds). ``--plot`` writes
accuracy against labels spent, mean ± std per strategy (margin-based thick, small-text's arms dotted).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

from common import time_to_target

MARGIN_BASED = ("mms", "mms_diverse")
PROBABILITY_BASED = ("breaking_ties", "breaking_ties_diverse", "entropy", "least_confidence", "smalltext_breaking_ties",
                     "smalltext_prediction_entropy", "smalltext_least_confidence")


def load_runs(folder: str) -> tuple[list[dict], list[str]]:
    """The runs with as many rounds as the longest, and the names of those with fewer (in progress or cut short,
    left out: a run stopped early would count as one that never reached the target)."""
    runs = [json.load(open(path)) for path in sorted(glob.glob(os.path.join(folder, "*.json")))]
    runs = [run for run in runs if run.get("rounds")]
    longest = max((len(run["rounds"]) for run in runs), default=0)
    short = [f"{run['strategy']} seed {run['seed']} ({len(run['rounds'])} of {longest} rounds)" for run in runs
             if len(run["rounds"]) < longest]
    return [run for run in runs if len(run["rounds"]) == longest], short


def curves(runs: list[dict]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """``{strategy: {seed: [(labels spent, test accuracy), ...]}}``."""
    by = defaultdict(dict)
    for run in runs:
        by[run["strategy"]][run["seed"]] = [(r["labels_spent"], r["test_accuracy"]) for r in run["rounds"]]
    return dict(sorted(by.items()))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def accuracy_table(by: dict) -> str:
    """One row per strategy, one column per number of labels spent: mean ± std (n seeds) of the test accuracy."""
    spent = sorted({labels for seeds in by.values() for points in seeds.values() for labels, _ in points})
    lines = ["| strategy | " + " | ".join(f"{n} labels" for n in spent) + " |", "|---|" + "---|" * len(spent)]
    for strategy, seeds in by.items():
        cells = []
        for n in spent:
            values = [accuracy for points in seeds.values() for labels, accuracy in points if labels == n]
            mean, std = mean_std(values) if values else (None, None)
            cells.append(f"{mean:.4f} ± {std:.4f} (n={len(values)})" if values else "")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reached_target(by: dict, target: float) -> dict[str, dict[int, dict]]:
    """``time_to_target`` per strategy and seed."""
    return {strategy: {seed: time_to_target(points, target) for seed, points in seeds.items()}
            for strategy, seeds in by.items()}


def paired_ratios(reached: dict, strategy: str, other: str) -> dict[int, float]:
    """Per seed where both reached the target after round 0: ``strategy``'s interpolated labels over ``other``'s."""
    mine, theirs = reached[strategy], reached.get(other, {})
    return {seed: t["interpolated"] / theirs[seed]["interpolated"] for seed, t in mine.items()
            if t["censored"] is None and seed in theirs and theirs[seed]["censored"] is None}


def seeds_with_fewer_labels(reached: dict, strategy: str, other: str) -> tuple[int, int, int]:
    """``(seeds where strategy needed fewer labels than other, seeds that decide it, seeds where only other reached
    the target)``: a seed decides when both reached the target after round 0 (the ratio below 1 or not), or only one
    of them reached it at all (that one needed fewer); a seed where neither did, or both in round 0, decides nothing."""
    mine, theirs = reached[strategy], reached.get(other, {})
    fewer = decided = only_theirs = 0
    for seed, t in mine.items():
        if seed not in theirs or "below" in (t["censored"], theirs[seed]["censored"]):
            continue
        if t["censored"] is None and theirs[seed]["censored"] is None:
            decided, fewer = decided + 1, fewer + (t["interpolated"] < theirs[seed]["interpolated"])
        elif (t["censored"] is None) != (theirs[seed]["censored"] is None):  # one of the two never reached it
            decided, fewer = decided + 1, fewer + (t["censored"] is None)
            only_theirs += t["censored"] is not None
    return fewer, decided, only_theirs


def labels_to_target(by: dict, target: float) -> str:
    """Per strategy: seeds reaching ``target``, mean labels to reach it (first round, interpolated) over those
    seeds, and the interpolated labels over random's on the same seed."""
    reached = reached_target(by, target)
    lines = [f"| strategy | seeds reaching {target:.4f} | labels (first round) | labels (interpolated) | "
             "interpolated / random's (range) |", "|---|---|---|---|---|"]
    for strategy, seeds in reached.items():
        hits = [t for t in seeds.values() if t["grid"] is not None]
        grid = f"{statistics.mean(t['grid'] for t in hits):.0f}" if hits else "-"
        interpolated = f"{statistics.mean(t['interpolated'] for t in hits):.0f}" if hits else "-"
        ratios = list(paired_ratios(reached, strategy, "random").values())
        ratio = f"{statistics.mean(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}, n={len(ratios)})" if ratios else "-"
        lines.append(f"| {strategy} | {len(hits)}/{len(seeds)} | {grid} | {interpolated} | {ratio} |")
    return "\n".join(lines)


def margin_against_others(by: dict, target: float, goal_ratio: float) -> str:
    """Each margin-based strategy against every other one, seed by seed (interpolated labels to ``target``), and
    the goal: mean ratio to random at most ``goal_ratio`` and below 1 against every probability-based strategy."""
    reached = reached_target(by, target)
    lines = ["| margin strategy | against | labels / theirs, mean (range) | seeds with fewer labels |", "|---|---|---|---|"]
    verdicts = []
    for strategy in [name for name in MARGIN_BASED if name in by]:
        means, majority, lost = {}, {}, {}
        for other in [name for name in by if name != strategy]:
            ratios = paired_ratios(reached, strategy, other)
            fewer, decided, lost[other] = seeds_with_fewer_labels(reached, strategy, other)
            if not ratios:
                lines.append(f"| {strategy} | {other} | - | {fewer}/{decided} |")
                continue
            means[other] = statistics.mean(ratios.values())
            majority[other] = fewer > decided / 2
            lines.append(f"| {strategy} | {other} | {means[other]:.2f} ({min(ratios.values()):.2f}-"
                         f"{max(ratios.values()):.2f}) | {fewer}/{decided} |")
        against = [name for name in PROBABILITY_BASED if name in by]
        missing = [name for name in against + ["random"] if name not in means]
        if missing:
            verdicts.append(f"{strategy}: goal not decidable, no paired seeds against {missing}")
            continue
        beaten = [name for name in against if means[name] < 1 and majority[name]]  # fewer on average and on most seeds
        # the mean ratio is over seeds where both reached the target: a seed where only random did counts against it
        met = means["random"] <= goal_ratio and not lost["random"] and len(beaten) == len(against)
        verdicts.append(f"{strategy}: {'MET' if met else 'NOT MET'} (labels / random's {means['random']:.2f}, goal "
                        f"<= {goal_ratio:g}; fewer labels than {len(beaten)} of {len(against)} probability-based "
                        f"strategies{'' if met else ': not ' + str([n for n in against if n not in beaten])})")
    return "\n".join(lines + [""] + [f"- {verdict}" for verdict in verdicts])


def plot(by: dict, path: str, target: float | None = None) -> None:
    """Test accuracy against labels spent: the mean over seeds per strategy, a band of ± one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # one colour per ranking: small-text's arm shares it with this package's arm of the same definition
    kind = {strategy: strategy.removeprefix("smalltext_").replace("prediction_entropy", "entropy") for strategy in by}
    colour = {name: plt.cm.tab10(number % 10) for number, name in enumerate(dict.fromkeys(kind.values()))}
    for strategy, seeds in by.items():
        spent = sorted({labels for points in seeds.values() for labels, _ in points})
        stats = [mean_std([a for points in seeds.values() for labels, a in points if labels == n]) for n in spent]
        mean = [m for m, _ in stats]
        style = ":" if strategy.startswith("smalltext_") else "-"  # small-text's arms dotted
        line, = ax.plot(spent, mean, "o" + style, markersize=3, color=colour[kind[strategy]],
                        linewidth=2.5 if strategy in MARGIN_BASED else 1.2, label=f"{strategy} (n={len(seeds)})")
        ax.fill_between(spent, [m - s for m, s in stats], [m + s for m, s in stats], color=line.get_color(), alpha=0.2)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("labels spent")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the --output_dir of scripts/run_active_learning.py")
    parser.add_argument("--full_accuracy", type=float, help="test accuracy of training on the whole pool")
    parser.add_argument("--target_fraction", type=float, default=0.9, help="target = this share of --full_accuracy")
    parser.add_argument("--goal_ratio", type=float, default=0.8, help="the goal's labels over random's, at most")
    parser.add_argument("--plot", help="write a PNG plot here")
    args = parser.parse_args(argv)
    runs, short = load_runs(args.folder)
    if not runs:
        raise SystemExit(f"no active-learning runs (JSON files with rounds) in {args.folder}")
    by = curves(runs)
    text = accuracy_table(by)
    if short:
        text += "\n\nLeft out, fewer rounds than the longest run: " + "; ".join(short)
    target = args.full_accuracy * args.target_fraction if args.full_accuracy is not None else None
    if target is not None:
        text += (f"\n\nLabels to reach {args.target_fraction:g} x {args.full_accuracy:.4f} = {target:.4f} test accuracy:\n\n"
                 + labels_to_target(by, target)
                 + "\n\nMargin-based selection against every other strategy (same seeds):\n\n"
                 + margin_against_others(by, target, args.goal_ratio))
    print(text)
    if args.plot:
        plot(by, args.plot, target)
    return text


if __name__ == "__main__":
    main()

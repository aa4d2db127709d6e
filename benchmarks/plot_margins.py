#!/usr/bin/env python
"""Plot the margin diagnostics of one or more runs (``margin_diagnostics.json``, written by
``MarginDiagnosticsCallback`` in a run's ``output_dir``). Writes two PNGs in ``--out_dir``:

- ``margin_quantiles.png``: the margin quantiles against optimizer steps, one panel per run: nested bands between
  the outer quantiles (5-95%, 25-75% by default) and the median as a line;
- ``lowest_margin_pairs.png``: at each run's last evaluation, how often each (top-1, top-2) class pair holds the
  lowest margins, as a heatmap (rows: top-1 class, columns: top-2 class).

A run is a JSON file (the callback's, or a study record of ``benchmarks/study.py``, which embeds it) or a folder
holding one, optionally named ``NAME=PATH`` (default name: the run's folder, or a study record's run)::

    python benchmarks/plot_margins.py out/margin_diagnostics.json --out_dir plots
    python benchmarks/plot_margins.py mms=runs/mms random=runs/random --out_dir plots
    python benchmarks/plot_margins.py alpha0=docs/results/mmr-banking77/banking77-alpha0-seed0.json --out_dir plots
"""

from __future__ import annotations

import argparse
import json
import os

FILE_NAME = "margin_diagnostics.json"


def load_run(spec: str) -> tuple[str, list[dict]]:
    """``(name, records)`` of ``NAME=PATH`` or ``PATH`` (a diagnostics file or the folder that holds it, or a study
    record); without ``NAME=``, the run's folder, or a study record's run name."""
    name, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else ("", spec)
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    with open(path) as f:
        records = json.load(f)
    default = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if isinstance(records, dict):  # a study record (benchmarks/study.py) carries the run's diagnostics
        records, default = records.get("margin_diagnostics", []), records.get("run", default)
    if not records:
        raise SystemExit(f"{path} holds no evaluation records")
    return name or default, records


def plot_quantiles(runs: list[tuple[str, list[dict]]], path: str) -> None:
    """Quantile bands of the margins against steps, a panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False, sharey=True)
    for ax, (name, records) in zip(axes[0], runs):
        steps = [r["step"] for r in records]
        keys = sorted(records[0]["margin_quantiles"], key=lambda key: float(key[1:]))
        series = {key: [r["margin_quantiles"][key] for r in records] for key in keys}
        for i in range(len(keys) // 2):
            low, high = keys[i], keys[-1 - i]
            ax.fill_between(steps, series[low], series[high], color="C0", alpha=0.2, linewidth=0,
                            label=f"{low[1:]}-{high[1:]}%")
        if len(keys) % 2:
            middle = keys[len(keys) // 2]
            ax.plot(steps, series[middle], "o-", color="C0", markersize=3, label=f"{middle[1:]}%")
        ax.set_title(name)
        ax.set_xlabel("optimizer steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("minimal margin score")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pairs(runs: list[tuple[str, list[dict]]], path: str) -> None:
    """Heatmaps of the class pairs holding the lowest margins at each run's last evaluation (every class up to 12
    classes, else the classes that occur in a pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4), squeeze=False)
    for ax, (name, records) in zip(axes[0], runs):
        last = records[-1]
        pairs = last["lowest_margin_pairs"]
        classes = (range(last["num_classes"]) if last["num_classes"] <= 12
                   else sorted({p["top1"] for p in pairs} | {p["top2"] for p in pairs}))
        where = {c: i for i, c in enumerate(classes)}
        counts = [[0] * len(classes) for _ in classes]
        for p in pairs:
            counts[where[p["top1"]]][where[p["top2"]]] = p["count"]
        image = ax.imshow(counts, cmap="viridis")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        if len(classes) <= 12:  # the counts in the cells
            for i, row in enumerate(counts):
                for j, count in enumerate(row):
                    ax.text(j, i, str(count), ha="center", va="center", color="w", fontsize=8)
        ax.set_title(f"{name}: lowest {100 * last['lowest_share']:g}%, step {last['step']}", fontsize=9)
        ax.set_xlabel("top-2 class")
        ax.set_ylabel("top-1 class")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help=f"[NAME=]PATH: a {FILE_NAME}, the run folder holding it, or a study record")
    parser.add_argument("--out_dir", default=".", help="folder for margin_quantiles.png and lowest_margin_pairs.png")
    args = parser.parse_args(argv)
    runs = [load_run(spec) for spec in args.runs]
    os.makedirs(args.out_dir, exist_ok=True)
    paths = [os.path.join(args.out_dir, name) for name in ("margin_quantiles.png", "lowest_margin_pairs.png")]
    plot_quantiles(runs, paths[0])
    plot_pairs(runs, paths[1])
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    main()

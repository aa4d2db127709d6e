#!/usr/bin/env python
"""Pick the linear probe's training settings of ``run_active_learning.py --frozen_encoder`` on the TRAIN pool only.

    python benchmarks/al_probe_settings.py --data_dir ../shared/data/banking77 --model_name_or_path "$MINILM" \\
        --embedding_cache runs/active-learning/banking77-embeddings.pt --json out.json

The pool's embeddings (the loop's own loading and cache) are split once at random (seed 0) into a fit part (80%) and
a held-out part (20%); the test file is never read for a score. Every setting of the grid (learning rate × full-batch
epochs × weight decay) trains the probe (the loop's ``train_probe``) on random subsets of the fit part of the sizes
an active-learning run spends (``SIZES``, two draws each) and is scored by the mean held-out accuracy over them; the
best one wins. With it, the held-out accuracy of random subsets of growing size against the whole fit part (the
learning curve that sizes the round schedule before any strategy runs) is printed and stored too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import run_active_learning as loop  # noqa: E402

from mmr_transformers.recipes.frozen_probe import probe_accuracy, train_probe  # noqa: E402

LEARNING_RATES = (1e-2, 3e-2, 1e-1)
EPOCHS = (100, 300)  # per-round cost bounds this: a study trains ~1,500 probes on one shared CPU core
WEIGHT_DECAYS = (0.0, 0.1)
SIZES = (200, 800, 3200)  # labels an active-learning run holds early, midway and late
DRAWS = 2
CURVE = (200, 400, 800, 1200, 1600, 2400, 3200, 4800)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the grid, the choice and the learning curve here")
    known, rest = parser.parse_known_args(argv)
    args = loop.parse_args(rest + ["--frozen_encoder", "--output_dir", "unused", "--initial_labels", "1",
                                   "--rounds", "0"])
    data = loop.load_data(args)
    features, labels = data["pool"]
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    held_out, fit = order[: len(order) // 5], order[len(order) // 5 :]
    num_classes = len(data["label_names"])

    def held_out_accuracy(size, draw, lr, epochs, decay):
        rows = fit[torch.from_numpy(np.random.default_rng(1 + draw).permutation(len(fit))[:size])]
        probe = train_probe(features[rows], labels[rows], num_classes, draw, epochs, lr, decay)
        return probe_accuracy(probe, features[held_out], labels[held_out])

    grid = []
    for lr, epochs, decay in itertools.product(LEARNING_RATES, EPOCHS, WEIGHT_DECAYS):
        scores = {size: statistics.mean(held_out_accuracy(size, d, lr, epochs, decay) for d in range(DRAWS))
                  for size in SIZES}
        grid.append({"learning_rate": lr, "epochs": epochs, "weight_decay": decay, "held_out": scores,
                     "mean": statistics.mean(scores.values())})
        print(f"lr {lr:g} epochs {epochs} weight decay {decay:g}: " + ", ".join(
            f"{size} labels {score:.4f}" for size, score in scores.items()) + f"; mean {grid[-1]['mean']:.4f}", flush=True)
    best = max(grid, key=lambda row: row["mean"])
    setting = (best["learning_rate"], best["epochs"], best["weight_decay"])
    curve = {size: statistics.mean(held_out_accuracy(size, d, *setting) for d in range(DRAWS)) for size in CURVE}
    curve[len(fit)] = held_out_accuracy(len(fit), 0, *setting)
    print(f"chosen: lr {setting[0]:g}, epochs {setting[1]}, weight decay {setting[2]:g}")
    print("held-out accuracy of random subsets: " + ", ".join(f"{n}: {a:.4f}" for n, a in curve.items()))
    result = {"split": {"fit": len(fit), "held_out": len(held_out), "seed": 0}, "grid": grid,
              "chosen": dict(zip(("learning_rate", "epochs", "weight_decay"), setting)), "learning_curve": curve}
    if known.json:
        with open(known.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

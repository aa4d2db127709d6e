"""What a fresh CIFAR-10 scoring pass costs, part by part, against one training step (ResNet-20, real JPEGs).

Per round, on a fresh draw of ``k·b`` training images, timed back to back so that machine noise hits the parts
alike: reading ``b`` and ``k·b`` images (JPEG decode, padded crop, flip, normalisation: what the data loader
does for a plain and for a selective step), one plain SGD step on ``b`` images, and the scoring pass over the
``k·b`` candidates at full resolution and at ``--image-scale`` (``selection_scoring_image_scale``), in
chunks of ``b`` as ``MMRTrainer`` scores. Each part is reported as a multiple of the training step (median
over rounds), with the selective step's ideal cost when loading runs in the training process:
``(load k·b + score + train) / (load b + train)``.

    python benchmarks/image_scoring_cost.py --rounds 7 --out docs/results/image_scoring_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils.data import default_collate

from mmr_transformers.recipes.image_data import load_image_datasets
from mmr_transformers.scoring import shorten_for_scoring
from mmr_transformers.batching import chunked_logits
from mmr_transformers.recipes.vision import build_model

from common import exclusive_cpu, median_part_seconds, plain_train_step, require_quiet_machine, unpack_cifar_jpegs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--image-scale", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = parser.parse_args()

    train, _, _ = load_image_datasets("imagefolder", unpack_cifar_jpegs())
    b, k = args.batch_size, args.k
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def read(indices):
        return default_collate([train[i] for i in indices])

    def score(pixel_values, scale):
        model.eval()
        with torch.inference_mode():
            chunked_logits(model, shorten_for_scoring({"pixel_values": pixel_values}, image_scale=scale), b)

    def parts_of_round(round_index):
        indices = order[round_index * k * b: (round_index + 1) * k * b]
        drawn = read(indices)  # the round's inputs, read once outside the timed parts
        batch, candidates = {key: value[:b] for key, value in drawn.items()}, drawn["pixel_values"]
        return {"load_b": lambda: read(indices[:b]), "load_kb": lambda: read(indices),
                "train_step": lambda: plain_train_step(model, optimizer, batch),
                "score_full": lambda: score(candidates, None), "score_scaled": lambda: score(candidates, args.image_scale)}

    with exclusive_cpu():
        load = require_quiet_machine(args.force)
        median = median_part_seconds(args.rounds, parts_of_round)

    step = median["train_step"]
    plain = median["load_b"] + step
    ideal = {name: (median["load_kb"] + median[name] + step) / plain for name in ("score_full", "score_scaled")}
    result = {"batch_size": b, "k": k, "image_scale": args.image_scale, "rounds": args.rounds, "cpu_busy_before": load,
              "torch_threads": torch.get_num_threads(), "seconds": median,
              "per_train_step": {name: value / step for name, value in median.items()},
              "selective_step_over_plain_loading_inline": ideal, "command": "python " + " ".join(sys.argv)}
    for name, value in median.items():
        print(f"{name:>13}: {value * 1e3:7.1f} ms = {value / step:.3f} train steps")
    print(f"selective step / plain step with loading in the training process: full resolution "
          f"{ideal['score_full']:.2f}x, scale {args.image_scale:g} {ideal['score_scaled']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

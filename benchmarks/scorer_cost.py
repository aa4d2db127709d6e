"""What a fresh scoring pass costs, part by part, against one training step (MiniLM-L6, real SST-2).

Per round, on a fresh draw of ``k·b`` training candidates (max 64 tokens, dynamic padding), timed back to
back so that machine noise hits the parts alike: one plain training step of ``b`` rows (forward, backward,
AdamW), the fp32 scoring pass over the ``k·b`` candidates (length-sorted chunks of ``b``, as
``MMRTrainer`` scores), the same pass through the int8 copy, and one in-place refresh of the int8 copy
(``refresh_quantized_scorer``, what ``selection_scorer_refresh_steps=1`` pays per step). Each part is
reported as a multiple of the training step (median over rounds), and the refresh is broken down by
operator with ``torch.profiler``.

    python benchmarks/scorer_cost.py --rounds 7 --out docs/results/scorer_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from mmr_transformers.scoring import quantized_scorer, refresh_quantized_scorer
from mmr_transformers.batching import chunked_logits

from common import (
    exclusive_cpu,
    median_part_seconds,
    minilm_path,
    plain_train_step,
    require_quiet_machine,
    sst2_tokenized,
)


def refresh_breakdown(scorer, model, top: int = 6) -> list[dict]:
    """The operators of one refresh, by self CPU time (milliseconds)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        refresh_quantized_scorer(scorer, model)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in events]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    b, k_max = args.batch_size, max(args.ks)
    data = sst2_tokenized(tokenizer, "train", limit=b * k_max * (args.rounds + 1), seed=0)
    collate = DataCollatorWithPadding(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    scorer = quantized_scorer(model)

    def score(net, batch):
        model.eval()
        with torch.inference_mode():
            chunked_logits(net, batch, b)

    def parts_of_round(round_index):
        rows = [data[i] for i in range(round_index * b * k_max, (round_index + 1) * b * k_max)]
        parts = {"train_step": lambda: plain_train_step(model, optimizer, collate(rows[:b])),
                 "refresh": lambda: refresh_quantized_scorer(scorer, model)}
        for k in args.ks:
            candidates = {key: v for key, v in collate(rows[: k * b]).items() if key != "labels"}
            parts[f"fp32_score_k{k}"] = lambda c=candidates: score(model, c)
            parts[f"int8_score_k{k}"] = lambda c=candidates: score(scorer, c)
        return parts

    with exclusive_cpu():
        load = require_quiet_machine(args.force)
        median = median_part_seconds(args.rounds, parts_of_round)
        breakdown = refresh_breakdown(scorer, model)

    step = median["train_step"]
    result = {"batch_size": b, "rounds": args.rounds, "cpu_busy_before": load, "torch_threads": torch.get_num_threads(),
              "seconds": median, "per_train_step": {name: value / step for name, value in median.items()},
              "refresh_ops": breakdown, "command": "python " + " ".join(sys.argv)}
    for name, value in median.items():
        print(f"{name:>16}: {value * 1e3:7.1f} ms = {value / step:.3f} train steps")
    for k in args.ks:
        fp32, int8 = median[f"fp32_score_k{k}"], median[f"int8_score_k{k}"]
        print(f"k={k}: int8 pass {fp32 / int8:.2f}x faster than fp32; with a refresh every step "
              f"{fp32 / (int8 + median['refresh']):.2f}x; selective step ideal fp32 {1 + fp32 / step:.2f}x, "
              f"int8-r1 {1 + (int8 + median['refresh']) / step:.2f}x plain")
    print("refresh by operator:", ", ".join(f"{e['op']} {e['self_ms']:.1f} ms ({e['calls']}x)" for e in breakdown))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

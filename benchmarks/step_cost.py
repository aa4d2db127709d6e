"""Per-step cost of MMR and of MMS selection, measured side by side in one run.

Arms, each a real ``MMRTrainer.train()`` on real SST-2 sentences with the pretrained MiniLM-L6 encoder:
``plain`` (alpha 0, no selection), ``mmr`` (alpha 1e-5), ``mms_k{K}`` (selection k·b → b) and ``random_k{K}``
(the same scoring, then a random b: its trained rows are as long as plain's, so it isolates the overhead
from the change in what is trained on). The arms are
interleaved round by round so that machine noise hits them alike; each ratio is taken within a round,
then the median over rounds is reported. The ideal cost of a selective step is
``1 + k · (inference pass of b samples) / (plain train step of b samples)``.

    python benchmarks/step_cost.py --rounds 3 --steps 6 --out docs/results/step_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from mmr_transformers import MMRTrainer, MMRTrainingArguments

from common import StepClock, inference_seconds, minilm_path, require_quiet_machine, sst2_tokenized


def build(args):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    needed = args.batch_size * max(args.ks) * (args.steps + 1)
    data = sst2_tokenized(tokenizer, "train", limit=needed, seed=args.seed, max_length=args.max_length)
    return tokenizer, data


def time_arm(settings, tokenizer, data, args, output_dir):
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    training = MMRTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=3e-5,
        lr_scheduler_type="constant", train_sampling_strategy="sequential", logging_steps=args.steps, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=args.seed, include_num_input_tokens_seen="non_padding",
        **settings,
    )
    clock = StepClock()
    trainer = MMRTrainer(model=model, args=training, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                         callbacks=[clock])
    trainer.train()
    tokens_per_step = trainer.state.num_input_tokens_seen / args.steps
    return statistics.median(clock.step_seconds()), tokens_per_step, trainer, model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm and round (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = parser.parse_args()
    load = require_quiet_machine(args.force)
    tokenizer, data = build(args)
    arms = {"plain": dict(mmr_alpha=0.0), "mmr": dict(mmr_alpha=1e-5)}
    for k in args.ks:
        for strategy in ("mms", "random"):
            arms[f"{strategy}_k{k}"] = dict(mmr_alpha=0.0, selection=strategy, selection_ratio=k)
    rounds, tokens = [], {}
    for r in range(args.rounds):
        seconds = {}
        for name, settings in arms.items():
            seconds[name], tokens[name], trainer, model = time_arm(settings, tokenizer, data, args,
                                                                   f"/tmp/step_cost_{name}")
            if name == "plain":
                seconds["inference"] = inference_seconds(model, trainer, args.steps)
        rounds.append(seconds)
        print(f"round {r}: " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items()), flush=True)

    def median_ratio(num, den="plain"):
        return statistics.median(s[num] / s[den] for s in rounds)

    inference_ratio = median_ratio("inference")
    result = {
        "command": "python " + " ".join(sys.argv),
        "torch_threads": torch.get_num_threads(),
        "cpu_busy_by_others_at_start": round(load, 3),
        "batch_size": args.batch_size,
        "rounds": rounds,
        "plain_step_seconds": statistics.median(s["plain"] for s in rounds),
        "inference_over_train_step": inference_ratio,
        "mmr_over_plain": median_ratio("mmr"),
        "trained_tokens_per_step": tokens,
        "selection": {
            f"{strategy}_k{k}": {"measured": median_ratio(f"{strategy}_k{k}"), "ideal": 1 + k * inference_ratio}
            for k in args.ks for strategy in ("mms", "random")
        },
    }
    print(f"\nplain step {result['plain_step_seconds']:.3f}s, inference/train {inference_ratio:.3f}")
    print(f"MMR / plain step: {result['mmr_over_plain']:.3f}")
    for name, v in result["selection"].items():
        print(f"{name}: {v['measured']:.3f}x plain (ideal {v['ideal']:.3f}x, measured/ideal {v['measured'] / v['ideal']:.3f}),"
              f" {tokens[name]:.0f} trained tokens/step vs plain {tokens['plain']:.0f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

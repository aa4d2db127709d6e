"""How well do cheap scorers rank candidates like the live fp32 model, along real fine-tuning?

Plain training of MiniLM-L6 on SST-2; at a few steps, a fixed pool of training candidates is scored by
the live fp32 model (the reference) and by each cheap scorer: an int8 copy of the live weights
(quantization noise alone), the fp32 weights of ``R`` steps ago (staleness alone), an int8 copy of the
weights of ``R`` steps ago (what ``selection_scorer="int8"`` uses just before a refresh), and the live
model on the first 16 tokens (``selection_scoring_max_length=16``). Reported per scorer: Spearman rank
agreement of the minimal margin scores with the reference, and the overlap of the lowest quarter (what
selection at k = 4 keeps).

    python benchmarks/scorer_agreement.py --out docs/results/scorer_agreement.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainerCallback

from mmr_transformers import MMRTrainer, MMRTrainingArguments, minimal_margin_scores
from mmr_transformers.scoring import quantized_scorer, rank_agreement, shorten_for_scoring
from mmr_transformers.batching import chunked_logits

from common import exclusive_cpu, minilm_path, require_quiet_machine, sst2_tokenized


def pool_margins(scorer, pool: dict, weight: torch.Tensor) -> torch.Tensor:
    """Minimal margin scores of every pool row, scored as MMRTrainer does (length-sorted chunks of 32)."""
    with torch.inference_mode():
        return minimal_margin_scores(chunked_logits(scorer, pool, 32).float(), weight)


def lowest_quarter_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    k = len(a) // 4
    return len(set(a.argsort()[:k].tolist()) & set(b.argsort()[:k].tolist())) / k


class Probe(TrainerCallback):
    def __init__(self, pool, at_steps, stale_steps):
        self.pool, self.at_steps, self.stale_steps = pool, set(at_steps), stale_steps
        self.snapshots, self.rows = {}, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step + self.stale_steps in self.at_steps:
            self.snapshots[step] = copy.deepcopy(model.state_dict())
        if step not in self.at_steps:
            return
        model.eval()
        stale = copy.deepcopy(model)
        stale.load_state_dict(self.snapshots.pop(step - self.stale_steps))
        weight = model.classifier.weight.detach()
        reference = pool_margins(model, self.pool, weight)
        scorers = {
            "int8 (live weights)": quantized_scorer(model),
            f"fp32, {self.stale_steps} steps stale": stale,
            f"int8, {self.stale_steps} steps stale": quantized_scorer(stale),
        }
        row = {"step": step}
        for name, scorer in scorers.items():
            margins = pool_margins(scorer, self.pool, weight)
            row[name] = {"spearman": rank_agreement(margins, reference), "lowest_quarter_overlap": lowest_quarter_overlap(margins, reference)}
        short = pool_margins(model, shorten_for_scoring(self.pool, max_length=16), weight)
        row["fp32, first 16 tokens"] = {"spearman": rank_agreement(short, reference),
                                        "lowest_quarter_overlap": lowest_quarter_overlap(short, reference)}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        model.train()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 80, 160, 320])
    parser.add_argument("--stale", type=int, default=20, help="R: steps between int8 refreshes")
    parser.add_argument("--pool", type=int, default=512)
    parser.add_argument("--out", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    with exclusive_cpu():
        require_quiet_machine(args.force)
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        data = sst2_tokenized(tokenizer, "train", limit=30_000, seed=1)
        pool_rows = data.select(range(args.pool))
        pool = DataCollatorWithPadding(tokenizer)([{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
                                                   for r in pool_rows])
        train = data.select(range(args.pool, len(data)))
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        probe = Probe(dict(pool), args.steps, args.stale)
        training = MMRTrainingArguments(
            output_dir="/tmp/scorer_agreement", per_device_train_batch_size=32, max_steps=max(args.steps),
            learning_rate=5e-5, warmup_steps=10, mmr_alpha=0.0, save_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True, logging_steps=50, seed=0,
        )
        MMRTrainer(model=model, args=training, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=[probe]).train()
    result = {"command": "python " + " ".join(sys.argv), "pool": args.pool, "stale_steps": args.stale, "rows": probe.rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

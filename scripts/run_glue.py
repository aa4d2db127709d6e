#!/usr/bin/env python
"""Fine-tune a sequence classifier on a GLUE task with MMR and/or MMS selection.

    accelerate launch scripts/run_glue.py --task rte --mmr-alpha 1e-5
    python scripts/run_glue.py --task sst2 --data_dir ../shared/data/glue/SST-2 --model_name_or_path ./model --use_cpu

Settings are layered: ``MMRTrainingArguments`` defaults < ``glue_configs/<task>.json`` (the thesis' settings)
< the command line. The resolved settings are saved as ``run_config.json`` beside ``all_results.json``.
Stages: parse → seed → load → preprocess → train → evaluate → save metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    set_seed,
)

from mmr_transformers import MMRTrainer, MMRTrainingArguments
from mmr_transformers.recipes.callbacks import EvalTimeline
from mmr_transformers.recipes.runner import parse_layered, train_and_evaluate
from mmr_transformers.recipes.glue import ALIASES, TASKS, get_task, glue_metrics, load_glue

logger = logging.getLogger(__name__)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "glue_configs")
SUBSET_SEED = 42  # --max_*_samples draw the same subset for every run, whatever its --seed


@dataclass
class GlueArguments:
    task: str = field(metadata={"help": "GLUE task.", "choices": sorted([*TASKS, *ALIASES])})
    data_dir: str | None = field(
        default=None, metadata={"help": "Local folder of the task's files (official GLUE tsv or a Hugging Face "
                                        "csv/tsv export); default: download nyu-mll/glue from the Hub."}
    )
    config_file: str | None = field(
        default=None, metadata={"help": "Settings file (JSON) under the command line; default glue_configs/<task>.json."}
    )
    model_name_or_path: str = field(default="bert-base-uncased", metadata={"help": "Hub id or local path."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per input after truncation."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to max_seq_length instead of to the longest in a batch."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this size (the same subset for every seed)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a random subset of this size."})
    hidden_dropout_prob: float | None = field(default=None, metadata={"help": "Override the model's dropout."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classifier has another number of labels (re-initialised)."}
    )


def parse_args(argv: list[str] | None = None) -> tuple[GlueArguments, MMRTrainingArguments]:
    """Defaults < glue_configs/<task>.json < command line."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--config_file", "--config-file")
    known, _ = pre.parse_known_args(argv)
    layers = []
    if known.task:
        layers.append(("defaults", {"output_dir": os.path.join("runs", "glue", known.task.lower())}))
        path = known.config_file or os.path.join(CONFIG_DIR, f"{known.task.lower()}.json")
        if known.config_file or os.path.exists(path):
            with open(path) as f:
                layers.append((path, json.load(f)))
    return parse_layered(HfArgumentParser((GlueArguments, MMRTrainingArguments)), layers, argv)


def check_task_settings(task, training_args: MMRTrainingArguments) -> None:
    if task.is_regression and (training_args.mmr_alpha > 0 or (training_args.mmr_alpha_end or 0) > 0
                               or training_args.selection != "none"):
        raise SystemExit(
            f"{task.name.upper()} is a regression task (one output), and MMR and margin-based selection need classes. "
            "Run it with --mmr_alpha 0 --selection none."
        )


def subset(dataset, size: int | None):
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=SUBSET_SEED).select(range(size))


def main(argv: list[str] | None = None) -> dict:
    glue_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    task = get_task(glue_args.task)
    check_task_settings(task, training_args)
    set_seed(training_args.seed)

    raw = load_glue(task, glue_args.data_dir, glue_args.cache_dir)
    config = AutoConfig.from_pretrained(glue_args.model_name_or_path, num_labels=task.num_labels,
                                        finetuning_task=task.name, cache_dir=glue_args.cache_dir)
    if glue_args.hidden_dropout_prob is not None:
        config.hidden_dropout_prob = glue_args.hidden_dropout_prob
    tokenizer = AutoTokenizer.from_pretrained(glue_args.model_name_or_path, cache_dir=glue_args.cache_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        glue_args.model_name_or_path, config=config, cache_dir=glue_args.cache_dir,
        ignore_mismatched_sizes=glue_args.ignore_mismatched_sizes,
    )

    def tokenize(batch):
        texts = [batch[column] for column in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=glue_args.max_seq_length,
                         padding="max_length" if glue_args.pad_to_max_length else False)

    with training_args.main_process_first(desc="tokenizing"):
        text_and_ids = [c for c in raw["train"].column_names if c != "label"]
        tokenized = raw.map(tokenize, batched=True, remove_columns=text_and_ids)
    train = subset(tokenized["train"], glue_args.max_train_samples)
    evals = {split: subset(tokenized[split], glue_args.max_eval_samples) for split in task.eval_splits}

    trainer = MMRTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evals[task.eval_splits[0]],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: glue_metrics(task, p.predictions, p.label_ids),
        callbacks=[EvalTimeline()],
    )

    prefixes = {split: "eval" if split == task.eval_splits[0] else "eval_mm" for split in task.eval_splits}
    return train_and_evaluate(trainer, {prefixes[split]: dataset for split, dataset in evals.items()},
                              {"task": task.name, "glue": glue_args})


if __name__ == "__main__":
    main()

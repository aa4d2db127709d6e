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
from transformers import DataCollatorWithPadding, HfArgumentParser, set_seed

from mmr_transformers import MMRTrainer, MMRTrainingArguments
from mmr_transformers.recipes.callbacks import EvalTimeline
from mmr_transformers.recipes.runner import check_sample_caps, parse_layered, train_and_evaluate
from mmr_transformers.recipes.glue import ALIASES, SPLIT_FILES, TASKS, get_task, glue_metrics, load_glue
from mmr_transformers.recipes.text import (TextModelArguments, load_sequence_classifier, subset,
                                           tokenize_splits)

logger = logging.getLogger(__name__)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "glue_configs")


class TaskChoices(tuple):
    """The ``--task`` choices: task names and aliases, accepted in any capitalisation (``SST-2``, ``RTE``)."""

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and tuple.__contains__(self, name.lower())


@dataclass
class GlueArguments(TextModelArguments):
    task: str = field(metadata={"help": "GLUE task (any capitalisation).", "choices": TaskChoices(sorted([*TASKS, *ALIASES]))})
    data_dir: str | None = field(
        default=None, metadata={"help": "Local folder of the task's files (official GLUE tsv or a Hugging Face "
                                        "csv/tsv export); default: download nyu-mll/glue from the Hub."}
    )
    config_file: str | None = field(
        default=None, metadata={"help": "Settings file (JSON) under the command line; default glue_configs/<task>.json."}
    )


def config_name(task: str) -> str | None:
    """The name of the task's settings file in ``glue_configs/``: the spelling's own file when there is one
    (``mnli-mm``), else the task's (``SST-2``, ``sst-2`` → ``sst2``); None for an unknown task.

    >>> [config_name(name) for name in ("SST-2", "sts-b", "mnli-m", "MNLI-MM", "RTE", "imdb")]
    ['sst2', 'stsb', 'mnli', 'mnli-mm', 'rte', None]
    """
    key = task.lower()
    if key not in TASKS and key not in ALIASES:
        return None  # the parser's choices reject it
    return key if os.path.exists(os.path.join(CONFIG_DIR, f"{key}.json")) else get_task(key).name


def parse_args(argv: list[str] | None = None) -> tuple[GlueArguments, MMRTrainingArguments]:
    """Defaults < glue_configs/<task>.json < command line."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--config_file", "--config-file")
    known, _ = pre.parse_known_args(argv)
    layers = []
    name = config_name(known.task) if known.task else None
    if name:
        layers.append(("defaults", {"output_dir": os.path.join("runs", "glue", name)}))
    path = known.config_file or (name and os.path.join(CONFIG_DIR, f"{name}.json"))
    if known.config_file or (path and os.path.exists(path)):
        if not os.path.isfile(path):
            raise SystemExit(f"--config_file {path}: no such file; pass a JSON settings file such as "
                             f"{os.path.join(CONFIG_DIR, 'rte.json')}.")
        with open(path) as f:
            layers.append((path, json.load(f)))
    return parse_layered(HfArgumentParser((GlueArguments, MMRTrainingArguments)), layers, argv)


def load_data(task, glue_args: GlueArguments):
    """The task's splits: local files (their errors name the file), or the Hub, where a failure to connect
    says how to run offline."""
    if glue_args.data_dir:
        return load_glue(task, glue_args.data_dir)
    try:
        return load_glue(task, None, glue_args.cache_dir)
    except OSError as error:  # ConnectionError, the Hub's HTTP errors, a dataset missing from an offline cache
        raise SystemExit(
            f"Could not load GLUE {task.name.upper()} from the Hugging Face Hub (nyu-mll/glue): {error}\n"
            f"Without a network, pass --data_dir with the task's local GLUE files (a folder holding "
            f"{' and '.join(SPLIT_FILES[split][0] for split in ('train', *task.eval_splits))}), a local "
            f"--model_name_or_path, and set HF_HUB_OFFLINE=1 so nothing waits for the Hub."
        ) from None


def check_task_settings(task, training_args: MMRTrainingArguments) -> None:
    if task.is_regression and (training_args.mmr_alpha > 0 or (training_args.mmr_alpha_end or 0) > 0
                               or training_args.selection != "none"):
        raise SystemExit(
            f"{task.name.upper()} is a regression task (one output), and MMR and margin-based selection need classes. "
            "Run it with --mmr_alpha 0 --selection none."
        )


def main(argv: list[str] | None = None) -> dict:
    glue_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    task = get_task(glue_args.task)
    check_task_settings(task, training_args)
    check_sample_caps(glue_args)
    set_seed(training_args.seed)

    raw = load_data(task, glue_args)
    labels = {"num_labels": 1} if task.is_regression else {"label_names": list(task.labels)}
    tokenizer, model = load_sequence_classifier(glue_args, "use --data_dir with local GLUE files",
                                                finetuning_task=task.name, **labels)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = tokenize_splits(raw, tokenizer, task.text_columns, glue_args)
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
                              {"task": config_name(glue_args.task), "glue": glue_args})  # mnli-mm stays mnli-mm


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Fine-tune a sequence classifier on your own labelled text files (CSV, TSV or JSON lines) with MMR and/or
MMS selection: the counterpart of Transformers' ``run_classification.py`` example.

    python scripts/run_classification.py --train_file ../shared/data/banking77/train.csv \\
        --validation_file ../shared/data/banking77/test.csv --text_column_names text --label_column_name category \\
        --model_name_or_path ./model --mmr_alpha 1e-4 --eval_strategy epoch --margin_diagnostics --use_cpu

Labels may be strings or integers; the classes are the training file's labels, sorted, and a validation label the
training file lacks is refused. Cells are read as written ("None" or "NA" is a label or a text, not a missing value);
rows without a label or a text are refused. Metrics: accuracy and macro F1. The resolved settings are saved as
``run_config.json`` beside ``all_results.json``.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from sklearn.metrics import f1_score
from transformers import DataCollatorWithPadding, HfArgumentParser, set_seed

from mmr_transformers import MMRTrainer, MMRTrainingArguments
from mmr_transformers.recipes.callbacks import EvalTimeline
from mmr_transformers.recipes.runner import check_sample_caps, parse_layered, train_and_evaluate
from mmr_transformers.recipes.text import (TextModelArguments, load_sequence_classifier, subset,
                                           tokenize_splits)

logger = logging.getLogger(__name__)
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class DataArguments(TextModelArguments):
    train_file: str = field(metadata={"help": "Training file: .csv, .tsv, .json or .jsonl (one object per line)."})
    validation_file: str = field(metadata={"help": "Evaluation file, in the training file's format and columns."})
    text_column_names: str = field(
        default="text", metadata={"help": "The text column, or two comma-separated columns for sentence pairs."}
    )
    label_column_name: str = field(default="label", metadata={"help": "The label column (strings or integers)."})


def read_files(args: DataArguments) -> datasets.DatasetDict:
    """The two files as ``train``/``validation``, refused with the reason when a file, its format or a column is
    wrong."""
    files = {"train": args.train_file, "validation": args.validation_file}
    extensions = {os.path.splitext(path)[1].lower() for path in files.values()}
    for split, path in files.items():
        if not os.path.isfile(path):
            raise SystemExit(f"--{split}_file {path}: no such file.")
    if len(extensions) != 1 or not extensions <= set(FORMATS):
        raise SystemExit(f"--train_file and --validation_file must share one format of {sorted(FORMATS)}; got "
                         f"{sorted(extensions)}.")
    extension = extensions.pop()
    # a TSV's fields are not quoted (GLUE's are not): a text that starts with '"' must not swallow the next rows;
    # cells are read as written: pandas would make "None", "NA" or "null" (an intent, a text) a missing value
    options = {"keep_default_na": False} if FORMATS[extension] == "csv" else {}
    if extension == ".tsv":
        options |= {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    raw = datasets.DatasetDict({split: datasets.load_dataset(FORMATS[extension], data_files=path, split="train", **options)
                                for split, path in files.items()})  # one by one: the columns may differ
    texts = text_columns(args)
    wanted = [*texts, args.label_column_name]
    for split, dataset in raw.items():
        missing = [column for column in wanted if column not in dataset.column_names]
        if missing:
            raise SystemExit(f"{files[split]}: no column {missing}; its columns are {dataset.column_names}. Name the "
                             f"text with --text_column_names and the label with --label_column_name.")
        for column in texts:
            empty = [i for i, value in enumerate(dataset[column]) if not isinstance(value, str) or not value.strip()]
            if empty:
                raise SystemExit(f"{files[split]}: {len(empty)} rows have no text in {column!r} (the first: "
                                 f"{data_row(empty[0])}). Every row needs its text; remove or fill those rows.")
    return raw


def data_row(index: int) -> str:
    return f"data row {index + 1}, counting from 1 after any header"


def text_columns(args: DataArguments) -> list[str]:
    columns = [column.strip() for column in args.text_column_names.split(",")]
    if not 1 <= len(columns) <= 2 or not all(columns):
        raise SystemExit(f"--text_column_names {args.text_column_names!r}: give one column, or two separated by a "
                         f"comma for sentence pairs.")
    return columns


def encode_labels(raw: datasets.DatasetDict, column: str, files: dict[str, str]) -> tuple[datasets.DatasetDict, list]:
    """``label`` = the index of each row's label among the training file's sorted labels; the label names. Labels
    are integers where every label of both files is one, else strings (a file's reader may type the column either
    way: 1 and "1" are one class). Rows without a label, and validation labels that never occur in training, are
    refused."""
    values = {split: dataset[column] for split, dataset in raw.items()}
    for split, labels in values.items():
        empty = [i for i, value in enumerate(labels) if value is None or str(value).strip() == ""]
        if empty:
            raise SystemExit(f"{files[split]}: {len(empty)} rows have no {column!r} (the first: {data_row(empty[0])}). "
                             f"Every row needs a label; remove or label those rows.")
    integers = all(isinstance(v, int) and not isinstance(v, bool) for labels in values.values() for v in labels)
    values = values if integers else {split: [str(v) for v in labels] for split, labels in values.items()}
    names = sorted(set(values["train"]))
    if len(names) < 2:
        raise SystemExit(f"{files['train']}: one class only ({names}); a classifier needs at least two.")
    unseen = sorted(set(values["validation"]) - set(names), key=str)
    if unseen:
        raise SystemExit(f"{files['validation']}: labels {unseen[:5]}{' ...' if len(unseen) > 5 else ''} never occur "
                         f"in {files['train']}, so the model has no class for them.")
    index = {name: i for i, name in enumerate(names)}
    encoded = datasets.DatasetDict({  # the file's own 'label' column, if another column holds the labels, is replaced
        split: dataset.remove_columns(sorted({column, "label"} & set(dataset.column_names)))
        .add_column("label", [index[v] for v in values[split]]) for split, dataset in raw.items()})
    return encoded, names


def metrics(eval_prediction) -> dict[str, float]:
    """Accuracy and macro-averaged F1 over the classes."""
    predictions = np.argmax(eval_prediction.predictions, axis=1)
    labels = eval_prediction.label_ids
    return {"accuracy": float(np.mean(predictions == labels)),
            "macro_f1": float(f1_score(labels, predictions, average="macro"))}


def main(argv: list[str] | None = None) -> dict:
    data_args, training_args = parse_layered(
        HfArgumentParser((DataArguments, MMRTrainingArguments)),
        [("defaults", {"output_dir": os.path.join("runs", "classification")})], argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    check_sample_caps(data_args)
    columns = text_columns(data_args)
    set_seed(training_args.seed)

    raw = read_files(data_args)
    raw, names = encode_labels(raw, data_args.label_column_name,
                               {"train": data_args.train_file, "validation": data_args.validation_file})
    tokenizer, model = load_sequence_classifier(data_args, "use local --train_file/--validation_file",
                                                [str(name) for name in names])
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = tokenize_splits(raw, tokenizer, columns, data_args)
    train = subset(tokenized["train"], data_args.max_train_samples)
    evaluation = subset(tokenized["validation"], data_args.max_eval_samples)

    trainer = MMRTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                         compute_metrics=metrics, callbacks=[EvalTimeline()])
    return train_and_evaluate(trainer, {"eval": evaluation}, {"data": data_args, "labels": [str(n) for n in names]})


if __name__ == "__main__":
    main()

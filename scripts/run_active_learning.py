#!/usr/bin/env python
"""Pool-based active learning for classification: a local CSV/TSV text data set with a local pretrained encoder, or
a folder of images (``--images``) with a CIFAR ResNet trained from scratch.

    python scripts/run_active_learning.py --data_dir ../shared/data/banking77 --model_name_or_path ./model \\
        --strategy mms breaking_ties random --seed 0 1 2 --initial_labels 100 --query_size 100 --rounds 10 \\
        --output_dir runs/active-learning/banking77
    python scripts/run_active_learning.py --images --data_dir runs/data/cifar10-jpg --image_model resnet20 \\
        --strategy mms mms_diverse breaking_ties random --initial_labels 1000 --query_size 1000 --rounds 4 \\
        --max_steps 2000 --output_dir runs/active-learning/cifar10

Each (strategy, seed) run: label a random seed set of ``--initial_labels`` rows of the train file (round 0; the same
rows for every strategy of a seed), then ``--rounds`` times: the latest model chooses ``--query_size`` of the still
unlabelled rows (``select_for_labeling``), they are labelled from the file's held labels, and a fresh model is
trained from the pretrained encoder on all labels so far (``MMRTrainer`` with ``mmr_alpha=0`` and no selection,
that is plain fine-tuning, for a fixed number of epochs or steps) and evaluated on the test file.

With ``--images`` the data folder holds ``train/`` and ``test/`` (or ``val/``) folders of class folders (torchvision's
ImageFolder, e.g. the CIFAR-10 JPEGs): each round trains a fresh ``--image_model`` (default ``resnet20``, initialised
by the seed) from scratch on the labelled images (random crop and flip; SGD with Nesterov momentum 0.9, weight decay
5e-4 and a cosine learning rate from 0.1 by default), and the query scores the unlabelled images without
augmentation.

With ``--frozen_encoder`` the encoder is not trained: the sentence embeddings of every pool and test text (mean
pooling, L2-normalised, as all-MiniLM-L6-v2 was trained; see ``mmr_transformers.recipes.frozen_probe``) are computed
once and cached (``--embedding_cache``), and each round trains a fresh linear probe on the labelled rows'
embeddings (full-batch AdamW, ``--probe_epochs`` steps) in seconds. This mode also runs small-text's query strategies
(``--strategy smalltext_*``; small-text installed) on the same probe, pools and seeds.

One JSON per run, ``<output_dir>/<strategy>-seed<seed>.json``, rewritten after every round: the settings, and per
round the labels spent, the rows labelled (0-based data rows of the train file), the test accuracy and the
seconds spent. It also holds the rows the last model chose for the next round, so the same command continues an
interrupted run (or one given more ``--rounds``) from its last finished round without the model. A restart with
other settings is refused. ``benchmarks/active_learning_report.py`` tabulates and plots the runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time

import datasets
import numpy as np
import torch
import transformers
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

from mmr_transformers import QUERY_STRATEGIES, MMRTrainer, MMRTrainingArguments, select_for_labeling
from mmr_transformers.recipes.frozen_probe import (
    SMALL_TEXT_ARMS, FeatureDataset, ProbeClassifier, cache_key, cached_embeddings, probe_accuracy,
    sentence_embeddings, small_text_strategy, train_probe,
)
from mmr_transformers.recipes.image_data import ImageDataset, load_image_datasets
from mmr_transformers.recipes.runner import accuracy
from mmr_transformers.recipes.vision import CIFAR_MODELS, build_model

SUBSET_SEED = 42  # --max_pool_samples / --max_test_samples draw the same rows for every run
# defaults that depend on the data: (text, --images)
MODE_DEFAULTS = {"learning_rate": (5e-5, 0.1), "batch_size": (16, 64), "weight_decay": (0.0, 5e-4)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder holding train.csv and test.csv (or .tsv); with "
                        "--images, train/ and test/ folders of class folders")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--label_column", default="category", help="class names or ids (BANKING77: category)")
    parser.add_argument("--model_name_or_path", help="a local pretrained encoder (with its tokenizer); text only")
    parser.add_argument("--images", action="store_true", help="--data_dir holds train/ and test/ folders of class "
                        "folders of images; each round trains --image_model from scratch")
    parser.add_argument("--image_model", default="resnet20", choices=sorted(CIFAR_MODELS), help="with --images")
    parser.add_argument("--output_dir", required=True, help="one JSON per (strategy, seed) run is written here")
    parser.add_argument("--strategy", nargs="+", default=["mms", "random"],
                        choices=sorted(QUERY_STRATEGIES) + sorted(SMALL_TEXT_ARMS),
                        help="this package's strategies; smalltext_* are small-text's (with --frozen_encoder only)")
    parser.add_argument("--seed", nargs="+", type=int, default=[0])
    parser.add_argument("--initial_labels", type=int, default=100, help="random seed set (round 0)")
    parser.add_argument("--query_size", type=int, default=100, help="rows labelled per round")
    parser.add_argument("--rounds", type=int, default=10, help="query rounds after round 0")
    parser.add_argument("--max_pool_samples", type=int, help="use a fixed random subset of the train rows as the pool")
    parser.add_argument("--max_test_samples", type=int, help="evaluate on a fixed random subset of the test rows")
    parser.add_argument("--num_train_epochs", type=float, default=10.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="optimizer steps per round (overrides the epochs)")
    parser.add_argument("--learning_rate", type=float, help="default 5e-5 (AdamW, text), 0.1 (SGD, --images)")
    parser.add_argument("--batch_size", type=int, help="training batch size (default 16, --images 64)")
    parser.add_argument("--weight_decay", type=float, help="default 0 (text), 5e-4 (--images)")
    parser.add_argument("--eval_batch_size", type=int, default=128, help="batch size of evaluation and of the query")
    parser.add_argument("--max_length", type=int, default=64, help="tokens per text after truncation")
    parser.add_argument("--use_cpu", action="store_true", help="train on the CPU even where a GPU is available")
    parser.add_argument("--frozen_encoder", action="store_true",
                        help="embed every text once (cached) and train a linear probe per round instead of fine-tuning")
    parser.add_argument("--probe_epochs", type=int, default=100, help="full-batch AdamW steps of the probe per round")
    parser.add_argument("--probe_learning_rate", type=float, default=0.1,
                        help="defaults: chosen on a held-out split of BANKING77's train pool (benchmarks/al_probe_settings.py)")
    parser.add_argument("--probe_weight_decay", type=float, default=0.0)
    parser.add_argument("--embedding_cache", help="where --frozen_encoder caches the embeddings "
                                                  "(default: <output_dir>/embeddings.pt)")
    args = parser.parse_args(argv)
    for name, defaults in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[args.images])
    if args.images and args.frozen_encoder:
        parser.error("--frozen_encoder embeds texts with a pretrained encoder; with --images each round trains "
                     "--image_model from scratch: drop one of the two.")
    if not args.images and not args.model_name_or_path:
        parser.error("text data needs --model_name_or_path (a local pretrained encoder); for a folder of images "
                     "add --images.")
    if not args.images:
        args.image_model = None  # not a setting of a text run
    for flag in ("initial_labels", "query_size", "max_pool_samples", "max_test_samples", "batch_size",
                 "eval_batch_size", "max_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} {value}: give at least 1")
    if args.rounds < 0:
        parser.error(f"--rounds {args.rounds}: give 0 or more query rounds")
    if args.probe_epochs < 1:
        parser.error(f"--probe_epochs {args.probe_epochs}: give at least 1")
    small_text_arms = [name for name in args.strategy if name in SMALL_TEXT_ARMS]
    if small_text_arms and not args.frozen_encoder:
        parser.error(f"--strategy {' '.join(small_text_arms)}: small-text's strategies run on the frozen encoder's "
                     "probe only; add --frozen_encoder.")
    for name in small_text_arms:
        small_text_strategy(name)  # small-text missing: refused now, not after the other runs
    return args


def split_file(data_dir: str, split: str) -> str:
    for name in (f"{split}.csv", f"{split}.tsv"):
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    found = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else "no such folder"
    raise SystemExit(f"--data_dir {data_dir}: no {split}.csv or {split}.tsv (found: {found}).")


def read_examples(path: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and label strings of a CSV (``.csv``) or tab-separated (``.tsv``) file with a header; every row is
    checked (as many fields as the header, a text and a label)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
        header = reader.fieldnames
        if not header:
            raise SystemExit(f"{path} is empty; it needs a header with {text_column!r} and {label_column!r}, then rows.")
        missing = [column for column in (text_column, label_column) if column not in header]
        if missing:
            raise SystemExit(f"{path}: no column {missing}; its header is {header}. Name the text and label columns "
                             f"with --text_column and --label_column.")
        texts, labels = [], []
        for row in reader:
            if None in row or None in row.values():
                raise SystemExit(f"{path}, line {reader.line_num}: not as many fields as the header {header}; fix the "
                                 f"quoting or the delimiters of that line.")
            if not row[text_column].strip() or not row[label_column].strip():
                raise SystemExit(f"{path}, line {reader.line_num}: empty text or label; fill it in or delete the row.")
            texts.append(row[text_column])
            labels.append(row[label_column].strip())
    if not texts:
        raise SystemExit(f"{path} has a header but no rows.")
    return texts, labels


def subset_rows(size: int, limit: int | None) -> np.ndarray:
    """Row numbers kept: all, or a fixed random ``limit`` of them (sorted)."""
    if limit is None or limit >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(size)[:limit])


def load_data(args: argparse.Namespace) -> dict:
    """The pool (the train rows, with the train file's row number of each), the test rows and their labels, as
    what the mode trains on: tokenized datasets (fine-tuning) or cached embeddings (``--frozen_encoder``). Also
    ``pool_inputs`` (the pool as the query sees it: no labels) and the query's ``collate_fn``."""
    if args.images:
        return load_images(args)
    train_path, test_path = split_file(args.data_dir, "train"), split_file(args.data_dir, "test")
    train_texts, train_labels = read_examples(train_path, args.text_column, args.label_column)
    test_texts, test_labels = read_examples(test_path, args.text_column, args.label_column)
    names = sorted(set(train_labels))
    unknown = sorted(set(test_labels) - set(names))
    if unknown:
        raise SystemExit(f"{test_path}: labels that {train_path} never has: {unknown[:5]}; the pool must hold every class.")
    if len(names) < 2:
        raise SystemExit(f"{train_path}: one class ({names}); classification needs at least 2.")
    ids = {name: i for i, name in enumerate(names)}
    pool_rows = subset_rows(len(train_texts), args.max_pool_samples)
    test_rows = subset_rows(len(test_texts), args.max_test_samples)
    check_budget(args, len(pool_rows))
    texts = {"pool": [train_texts[i] for i in pool_rows], "test": [test_texts[i] for i in test_rows]}
    labels = {"pool": [ids[train_labels[i]] for i in pool_rows], "test": [ids[test_labels[i]] for i in test_rows]}
    data = {"pool_rows": pool_rows.tolist(), "label_names": names, "pool_labels": np.array(labels["pool"])}
    tokenizer = load_tokenizer(args.model_name_or_path)
    if args.frozen_encoder:
        features = embed_texts(args, tokenizer, texts)
        data.update({split: (features[split], torch.tensor(labels[split])) for split in ("pool", "test")})
        data.update(pool_inputs=FeatureDataset(features["pool"]), collate_fn=None)
        return data

    def tokenized(split):
        rows = datasets.Dataset.from_dict({"text": texts[split], "labels": labels[split]})
        return rows.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
                        batched=True, remove_columns=["text"])

    data.update(pool=tokenized("pool"), test=tokenized("test"), collate_fn=DataCollatorWithPadding(tokenizer))
    data["pool_inputs"] = data["pool"].remove_columns("labels")  # the held labels never reach the query
    return data


def check_budget(args: argparse.Namespace, pool_size: int) -> None:
    needed = args.initial_labels + args.rounds * args.query_size
    if needed > pool_size:
        raise SystemExit(f"--initial_labels {args.initial_labels} + --rounds {args.rounds} x --query_size "
                         f"{args.query_size} = {needed} labels, but the pool holds {pool_size} rows: ask for fewer.")


class PixelsOnly(torch.utils.data.Dataset):
    """The images of an :class:`ImageDataset` without their labels: the pool as the query sees it."""

    def __init__(self, images: ImageDataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i]["pixel_values"]}


def load_images(args: argparse.Namespace) -> dict:
    """:func:`load_data` for ``--images``: the pool with the training augmentation (to train on), the same rows
    without augmentation and labels (to query), the test rows without augmentation."""
    try:
        train, test, _ = load_image_datasets("imagefolder", args.data_dir)
    except ValueError as error:
        raise SystemExit(f"--images --data_dir {args.data_dir}: {error}") from None
    pool_rows = subset_rows(len(train.source), args.max_pool_samples).tolist()
    test_rows = subset_rows(len(test.source), args.max_test_samples).tolist()
    check_budget(args, len(pool_rows))
    query_view = ImageDataset(train.source, test.transform, pool_rows)  # no augmentation
    return {"pool_rows": pool_rows, "label_names": train.source.classes,
            "pool_labels": np.array(train.source.targets)[pool_rows],
            "pool": ImageDataset(train.source, train.transform, pool_rows),
            "test": ImageDataset(test.source, test.transform, test_rows),
            "pool_inputs": PixelsOnly(query_view), "collate_fn": None}


def rows_of(dataset, positions: list[int]):
    """The rows at ``positions`` of a ``datasets.Dataset`` or of a map-style torch dataset."""
    return dataset.select(positions) if hasattr(dataset, "select") else torch.utils.data.Subset(dataset, positions)


def embed_texts(args: argparse.Namespace, tokenizer, texts: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """The sentence embeddings of the pool and test texts, from the cache (``--embedding_cache``) or computed once."""

    def compute():
        print(f"embedding {sum(map(len, texts.values()))} texts with {args.model_name_or_path} (cached afterwards)",
              flush=True)
        encoder = AutoModel.from_pretrained(args.model_name_or_path)
        return {split: sentence_embeddings(encoder, tokenizer, rows, args.max_length, args.eval_batch_size)
                for split, rows in texts.items()}

    key = cache_key(args.model_name_or_path, texts, args.max_length)
    return cached_embeddings(args.embedding_cache or os.path.join(args.output_dir, "embeddings.pt"), key, compute)


def load_tokenizer(name: str):
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise SystemExit(f"Could not load the tokenizer of --model_name_or_path {name!r}: {error}\nPass a local folder "
                         "with config.json, the weights and the tokenizer files (as save_pretrained writes them).") from None


def train_round(args: argparse.Namespace, data: dict, labelled: list[int], seed: int):
    """A fresh model trained on the pool positions ``labelled`` (fine-tuned from the pretrained encoder, its head
    initialised by ``seed``; or with ``--frozen_encoder`` a linear probe on the embeddings) and evaluated on the
    test rows: ``(model, test accuracy, training seconds)``."""
    if args.frozen_encoder:
        started = time.perf_counter()
        (features, labels), test = data["pool"], data["test"]
        probe = train_probe(features[labelled], labels[labelled], len(data["label_names"]), seed, args.probe_epochs,
                            args.probe_learning_rate, args.probe_weight_decay)
        return probe, probe_accuracy(probe, *test), time.perf_counter() - started
    set_seed(seed)
    names = data["label_names"]
    if args.images:  # from scratch: SGD with Nesterov momentum and a cosine schedule
        model = build_model(args.image_model, len(names))
        # the Trainer passes these kwargs alone (no lr from its arguments) to the optimizer class
        sgd = {"lr": args.learning_rate, "momentum": 0.9, "nesterov": True}
        mode = {"optimizer_cls_and_kwargs": (torch.optim.SGD, sgd)}
        mode_args = {"lr_scheduler_type": "cosine", "remove_unused_columns": False}
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model_name_or_path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)})
        mode, mode_args = {}, {}
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = MMRTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=args.num_train_epochs,
            max_steps=args.max_steps, learning_rate=args.learning_rate, weight_decay=args.weight_decay, seed=seed,
            mmr_alpha=0.0, selection="none", save_strategy="no", logging_strategy="no", report_to=[],
            disable_tqdm=True, use_cpu=args.use_cpu, **mode_args,
        )
        trainer = MMRTrainer(model=model, args=training_args, train_dataset=rows_of(data["pool"], labelled),
                             data_collator=data["collate_fn"], compute_metrics=accuracy, **mode)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        metrics = trainer.evaluate(eval_dataset=data["test"])
    return trainer.model, metrics["eval_accuracy"], seconds


def query(args: argparse.Namespace, data: dict, model, strategy: str, labelled: list[int], seed: int) -> list[int]:
    """The pool positions ``model`` wants labelled next (at most ``--query_size``; none when the pool is spent):
    ``select_for_labeling`` over the unlabelled rows, or small-text's strategy over the same probe (its numpy draws,
    e.g. EmbeddingKMeans' k-means, seeded by ``seed``)."""
    unlabelled = sorted(set(range(len(data["pool_rows"]))) - set(labelled))
    if not unlabelled:
        return []
    size = min(args.query_size, len(unlabelled))
    if strategy in SMALL_TEXT_ARMS:
        np.random.seed(seed)
        chosen = small_text_strategy(strategy).query(ProbeClassifier(model), data["pool"][0].numpy(), np.array(unlabelled),
                                                     np.array(labelled), data["pool_labels"][labelled], n=size)
        return [int(i) for i in chosen]
    chosen = select_for_labeling(model, rows_of(data["pool_inputs"], unlabelled), size, strategy,
                                 collate_fn=data["collate_fn"], batch_size=args.eval_batch_size, seed=seed)
    return [unlabelled[i] for i in chosen]


SETTINGS = ("data_dir", "text_column", "label_column", "model_name_or_path", "initial_labels", "query_size",
            "max_pool_samples", "max_test_samples", "num_train_epochs", "max_steps", "learning_rate", "batch_size",
            "max_length", "frozen_encoder", "probe_epochs", "probe_learning_rate", "probe_weight_decay", "images",
            "image_model", "weight_decay")
# settings added after runs were stored: what those runs used
STORED_BEFORE = {"images": False, "image_model": None, "weight_decay": 0.0}


def load_record(path: str, args: argparse.Namespace, strategy: str, seed: int, data: dict) -> dict:
    """The run's record so far, or a new one; a stored run with other settings is refused."""
    settings = {name: getattr(args, name) for name in SETTINGS}
    if not os.path.exists(path):
        return {"strategy": strategy, "seed": seed, "settings": settings, "pool_size": len(data["pool_rows"]),
                "test_size": len(data["test"][1] if args.frozen_encoder else data["test"]),
                "num_classes": len(data["label_names"]), "rounds": [], "next_query": None}
    with open(path) as f:
        record = json.load(f)
    stored = record["settings"]
    changed = [f"--{name} {stored.get(name, STORED_BEFORE.get(name))}" for name in SETTINGS
               if stored.get(name, STORED_BEFORE.get(name)) != settings[name]]
    if changed:
        raise SystemExit(f"{path} was run with other settings ({', '.join(changed)}); rerun with those to continue "
                         f"it, or pass another --output_dir to start a new run.")
    return record


def write_record(path: str, record: dict) -> None:
    """Replace the run's JSON at once (a crash leaves the previous round's file, never half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def run(args: argparse.Namespace, data: dict, strategy: str, seed: int) -> dict:
    """Rounds of one (strategy, seed) run up to ``args.rounds``, continuing its JSON's last finished round."""
    path = os.path.join(args.output_dir, f"{strategy}-seed{seed}.json")
    record = load_record(path, args, strategy, seed, data)
    position_of = {row: position for position, row in enumerate(data["pool_rows"])}
    labelled = [position_of[row] for done in record["rounds"] for row in done["labelled"]]
    while len(record["rounds"]) <= args.rounds:
        number = len(record["rounds"])
        if number == 0:  # the seed set: the same rows for every strategy of this seed
            new = np.random.default_rng(seed).choice(len(data["pool_rows"]), args.initial_labels, replace=False).tolist()
        else:
            new = [position_of[row] for row in record["next_query"]]
        labelled += new
        model, test_accuracy, train_seconds = train_round(args, data, labelled, seed)
        started = time.perf_counter()
        chosen = query(args, data, model, strategy, labelled, 1000 * seed + number)
        record["next_query"] = [data["pool_rows"][i] for i in chosen]
        record["rounds"].append({
            "round": number, "labels_spent": len(labelled), "labelled": [data["pool_rows"][i] for i in new],
            "test_accuracy": test_accuracy, "train_seconds": round(train_seconds, 2),
            "query_seconds": round(time.perf_counter() - started, 2),
        })
        write_record(path, record)
        print(f"{strategy} seed {seed} round {number}: {len(labelled)} labels, test accuracy {test_accuracy:.4f} "
              f"({train_seconds:.0f} s training)", flush=True)
    return record


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    transformers.utils.logging.set_verbosity_error()  # the fresh head's "newly initialized" warning, every round
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_data(args)
    return [run(args, data, strategy, seed) for seed in args.seed for strategy in args.strategy]


if __name__ == "__main__":
    main()

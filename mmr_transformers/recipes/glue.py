"""GLUE tasks: their columns, the local files of their two common layouts, and their metrics.

Data come from the Hub (``nyu-mll/glue``) or from a local directory holding either the official GLUE
tsv files (``train.tsv``/``dev.tsv``, MRPC and SST-2 read with ``QUOTE_NONE``) or a Hugging Face export
(csv/tsv with the Hub's column names, CSV quoting). Metrics are computed locally (scikit-learn/scipy).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import datasets
import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Layout:
    """One file layout of a task: source column → Hub column, label strings → ids, quoting, header."""

    columns: dict[str, str]
    quoting: int = csv.QUOTE_NONE
    label_names: dict[str, int] = field(default_factory=dict)
    header: bool = True
    names: tuple[str, ...] = ()  # column names of a headerless file
    markers: tuple[str, ...] = ()  # columns that identify the layout without being read

    def matches(self, header: list[str]) -> bool:
        return self.header and set(self.columns) | set(self.markers) <= set(header)


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]  # Hub column names
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    official: Layout | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def hf_layout(self) -> Layout:
        columns = {c: c for c in (*self.text_columns, "label")}
        return Layout(columns, quoting=csv.QUOTE_MINIMAL)


NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
NLI2 = {"entailment": 0, "not_entailment": 1}

TASKS = {
    "cola": GlueTask("cola", ("sentence",), 2, ("matthews_correlation",),
                     official=Layout({"sentence": "sentence", "label": "label"}, header=False,
                                     names=("source", "label", "original_label", "sentence"))),
    "sst2": GlueTask("sst2", ("sentence",), 2, ("accuracy",),
                     official=Layout({"sentence": "sentence", "label": "label"})),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("f1", "accuracy"),
                     official=Layout({"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"})),
    "qqp": GlueTask("qqp", ("question1", "question2"), 2, ("f1", "accuracy"),
                    official=Layout({"question1": "question1", "question2": "question2", "is_duplicate": "label"})),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"),
                     official=Layout({"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"},
                                     markers=("index",))),
    "mnli": GlueTask("mnli", ("premise", "hypothesis"), 3, ("accuracy",),
                     eval_splits=("validation_matched", "validation_mismatched"),
                     official=Layout({"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
                                     label_names=NLI3, markers=("index",))),
    "qnli": GlueTask("qnli", ("question", "sentence"), 2, ("accuracy",),
                     official=Layout({"question": "question", "sentence": "sentence", "label": "label"}, label_names=NLI2,
                                     markers=("index",))),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), 2, ("accuracy",),
                    official=Layout({"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}, label_names=NLI2,
                                    markers=("index",))),
    "wnli": GlueTask("wnli", ("sentence1", "sentence2"), 2, ("accuracy",),
                     official=Layout({"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
                                     markers=("index",))),
}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}

# Local file names per split, first match wins.
SPLIT_FILES = {
    "train": ("train.tsv", "train.csv"),
    "validation": ("dev.tsv", "validation.tsv", "dev.csv", "validation.csv"),
    "validation_matched": ("dev_matched.tsv", "validation_matched.tsv", "dev_matched.csv", "validation_matched.csv"),
    "validation_mismatched": ("dev_mismatched.tsv", "validation_mismatched.tsv", "dev_mismatched.csv",
                              "validation_mismatched.csv"),
}


def get_task(name: str) -> GlueTask:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}; choose one of {sorted(TASKS)} (aliases: {sorted(ALIASES)}).")
    return TASKS[key]


def _header(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        first = f.readline().rstrip("\r\n")
    return first.split("\t") if path.endswith(".tsv") else next(csv.reader([first]))


def read_split(task: GlueTask, path: str) -> datasets.Dataset:
    """Read one local GLUE file in the official or the Hugging Face layout into the Hub's columns."""
    header = _header(path)
    candidates = [task.official, task.hf_layout] if task.official else [task.hf_layout]
    layout = next((c for c in candidates if c.matches(header)), None)
    if layout is None and task.official and not task.official.header and len(header) == len(task.official.names):
        layout = task.official
    if layout is None:
        expected = " or ".join(repr(sorted({*c.columns, *c.markers})) for c in candidates if c.header)
        raise ValueError(
            f"{path} does not look like a {task.name.upper()} file: its header is {header}, but the columns "
            f"{expected} were expected (the official GLUE layout or the Hugging Face export). Point --data_dir at "
            f"the {task.name.upper()} folder of GLUE, or download the task with `datasets`."
        )
    frame = pd.read_csv(
        path, sep="\t" if path.endswith(".tsv") else ",", quoting=layout.quoting, encoding="utf-8-sig", dtype=str,
        keep_default_na=False, header=0 if layout.header else None, names=list(layout.names) or None,
    )
    frame = frame[list(layout.columns)].rename(columns=layout.columns)
    frame["label"] = _labels(task, layout, frame["label"], path)
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _labels(task: GlueTask, layout: Layout, values: pd.Series, path: str) -> pd.Series:
    if task.is_regression:
        return values.astype(float)
    if layout.label_names and not values.str.lstrip("-").str.isdigit().all():
        unknown = sorted(set(values) - set(layout.label_names))
        if unknown:
            raise ValueError(f"{path}: unknown {task.name.upper()} labels {unknown[:5]}; expected {sorted(layout.label_names)}.")
        return values.map(layout.label_names).astype(int)
    labels = values.astype(int)
    bad = sorted(set(labels) - set(range(task.num_labels)) - {-1})
    if bad:
        raise ValueError(f"{path}: labels {bad[:5]} are outside 0..{task.num_labels - 1} for {task.name.upper()}.")
    return labels


def load_local(task: GlueTask, data_dir: str) -> datasets.DatasetDict:
    """The train and evaluation splits of ``task`` from a local directory."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data_dir {data_dir!r} is not a directory.")
    present = sorted(os.listdir(data_dir))
    splits = {}
    for split in ("train", *task.eval_splits):
        name = next((n for n in SPLIT_FILES[split] if n in present), None)
        if name is None:
            raise ValueError(
                f"no {split} file for {task.name.upper()} in {data_dir}: expected one of {list(SPLIT_FILES[split])}, "
                f"found {present}."
            )
        splits[split] = read_split(task, os.path.join(data_dir, name))
    return datasets.DatasetDict(splits)


def load_glue(task: GlueTask, data_dir: str | None = None, cache_dir: str | None = None) -> datasets.DatasetDict:
    """Local files when ``data_dir`` is given, else the Hub's ``nyu-mll/glue``."""
    if data_dir:
        return load_local(task, data_dir)
    loaded = datasets.load_dataset("nyu-mll/glue", task.name, cache_dir=cache_dir)
    return datasets.DatasetDict({split: loaded[split] for split in ("train", *task.eval_splits)})


def glue_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's GLUE metrics from logits (or regression outputs) and labels."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task.is_regression:
        scores = np.squeeze(predictions)
        return {"pearson": float(pearsonr(scores, labels)[0]), "spearmanr": float(spearmanr(scores, labels)[0])}
    predicted = np.argmax(predictions, axis=1)
    compute = {
        "accuracy": lambda: accuracy_score(labels, predicted),
        "f1": lambda: f1_score(labels, predicted),
        "matthews_correlation": lambda: matthews_corrcoef(labels, predicted),
    }
    return {name: float(compute[name]()) for name in task.metrics}

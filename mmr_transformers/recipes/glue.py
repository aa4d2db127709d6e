"""GLUE tasks: their columns, the local files of their two common layouts, and their metrics.

Data come from the Hub (``nyu-mll/glue``) or from a local directory holding either the official GLUE
tsv files (``train.tsv``/``dev.tsv``, read verbatim: ``QUOTE_NONE``) or a Hugging Face export (csv/tsv with
the Hub's column names; a csv file with CSV quoting, a tsv file with CSV quoting only when it was written so, see
:func:`is_csv_quoted_tsv`). Files are read with the ``csv`` module, every row checked (one line, as many fields
as the header, a label). Metrics are computed locally (scikit-learn/scipy).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field

import datasets
import numpy as np


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
    labels: tuple[str, ...]  # the Hub's class names, class i at i; none for regression
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    official: Layout | None = None

    @property
    def num_labels(self) -> int:
        """Outputs of the model: one per class, one for regression."""
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def hf_layout(self) -> Layout:
        columns = {c: c for c in (*self.text_columns, "label")}
        return Layout(columns, quoting=csv.QUOTE_MINIMAL)


NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
NLI2 = {"entailment": 0, "not_entailment": 1}

TASKS = {
    "cola": GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                     official=Layout({"sentence": "sentence", "label": "label"}, header=False,
                                     names=("source", "label", "original_label", "sentence"))),
    "sst2": GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",),
                     official=Layout({"sentence": "sentence", "label": "label"})),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
                     official=Layout({"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"})),
    "qqp": GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
                    official=Layout({"question1": "question1", "question2": "question2", "is_duplicate": "label"})),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"),
                     official=Layout({"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"},
                                     markers=("index",))),
    "mnli": GlueTask("mnli", ("premise", "hypothesis"), tuple(NLI3), ("accuracy",),
                     eval_splits=("validation_matched", "validation_mismatched"),
                     official=Layout({"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
                                     label_names=NLI3, markers=("index",))),
    "qnli": GlueTask("qnli", ("question", "sentence"), tuple(NLI2), ("accuracy",),
                     official=Layout({"question": "question", "sentence": "sentence", "label": "label"}, label_names=NLI2,
                                     markers=("index",))),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), tuple(NLI2), ("accuracy",),
                    official=Layout({"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}, label_names=NLI2,
                                    markers=("index",))),
    "wnli": GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
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


def _decoded_lines(path: str) -> list[str]:
    """The lines of ``path`` decoded as UTF-8 (a leading BOM dropped), each with its line break. A byte that is
    not UTF-8 fails naming the file, line and column."""
    lines = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}, column {error.start + 1}: byte 0x{raw[error.start]:02x} is not UTF-8. "
                    f"GLUE files are UTF-8: convert the file (e.g. `iconv -f cp1252 -t utf-8 {os.path.basename(path)} "
                    f"> fixed`, naming its real encoding) or fix that line."
                ) from None
    return lines


# A tab-separated line whose every field either holds no '"' or is quoted: '"', then only non-quote characters
# (tabs too) and doubled '""', then '"'.
_CSV_QUOTED_TSV_LINE = re.compile(r'(?:"(?:[^"]|"")*"|[^"\t]*)(?:\t(?:"(?:[^"]|"")*"|[^"\t]*))*')


def is_csv_quoted_tsv(lines: list[str]) -> bool:
    r'''Whether tab-separated ``lines`` were written with CSV quoting (Python's ``csv``/pandas ``QUOTE_MINIMAL``).

    The rule: at least one line holds a ``"``, and on every line each tab-separated field either holds no ``"``
    or is quoted: it starts and ends with ``"`` and every ``"`` between is doubled (``""``); a quoted field may
    hold tabs but no line break. A CSV writer produces exactly this (it quotes every field holding a quote, a tab
    or a line break), while verbatim text almost never does: one unquoted ``"`` anywhere (``he said "hi"``, an
    opening quote without its closing one) makes the file verbatim.

    >>> is_csv_quoted_tsv(['"say ""hi"""\t1\n', 'plain\t0\n'])
    True
    >>> is_csv_quoted_tsv(['"say ""hi"""\t1\n', 'he said "no"\t0\n'])
    False
    >>> is_csv_quoted_tsv(['"an opening quote only\t1\n'])
    False
    '''
    quoted = [line.rstrip("\r\n") for line in lines if '"' in line]
    return bool(quoted) and all(_CSV_QUOTED_TSV_LINE.fullmatch(line) for line in quoted)


def _split_rows(path: str, lines: list[str], delimiter: str, csv_quoted: bool,
                header: bool) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank line: split at each delimiter (verbatim), or parsed with CSV
    quoting, where a row must still be one line: a quoted field that runs over a line break (an unbalanced
    ``"``) would swallow the rows up to the next quote, so it fails naming the line where rows and lines part."""
    if not csv_quoted:
        return [(number, line.rstrip("\r\n").split(delimiter))
                for number, line in enumerate(lines, 1) if line.strip("\r\n")]
    rows, spans = [], []
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
    start = 1
    try:
        for fields in reader:
            if fields:
                rows.append((start, fields))
                if reader.line_num != start:
                    spans.append((start, reader.line_num))
            start = reader.line_num + 1
    except csv.Error as error:
        raise ValueError(
            f"{path}, line {start}: not valid CSV ({error}). A quoted field must end with '\"' followed by the "
            f"delimiter or the line end, with every '\"' inside doubled; fix the quoting on that line or re-export "
            f"the file."
        ) from None
    if spans:
        data_lines = sum(1 for line in lines if line.strip("\r\n")) - header
        first, last = spans[0]
        raise ValueError(
            f"{path}: {len(rows) - header} data rows parsed from {data_lines} data lines; they part at line {first}, whose row "
            f"runs on to line {last} (a quoted field holds a line break, or a '\"' is unbalanced). Every row must be "
            f"one line: remove the line breaks inside fields or fix the quoting on line {first}."
        )
    return rows


def read_split(task: GlueTask, path: str) -> datasets.Dataset:
    """Read one local GLUE file in the official or the Hugging Face layout into the Hub's columns.

    Quoting: a ``.csv`` file is read with CSV quoting; a ``.tsv`` file in the official GLUE layout verbatim
    (``QUOTE_NONE``: one row per line, split at every tab, quotes kept); a ``.tsv`` file in the Hugging Face
    layout with CSV quoting only when :func:`is_csv_quoted_tsv` says it was written so, verbatim otherwise.
    Every row must be one line with as many fields as the header, and carry a label; anything else fails
    naming the file and line."""
    lines = _decoded_lines(path)
    is_csv = path.endswith(".csv")
    delimiter = "," if is_csv else "\t"
    first = next((line for line in lines if line.strip("\r\n")), None)
    if first is None:
        raise ValueError(f"{path} is empty; it needs the {task.name.upper()} rows (a GLUE file or a Hugging Face export).")
    header = next(csv.reader([first])) if is_csv else first.rstrip("\r\n").split("\t")
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
    csv_quoted = is_csv or (layout.quoting != csv.QUOTE_NONE and is_csv_quoted_tsv(lines))
    rows = _split_rows(path, lines, delimiter, csv_quoted, layout.header)
    names = header if layout.header else list(layout.names)
    if layout.header:
        rows = rows[1:]
    if not rows:
        raise ValueError(
            f"{path} has a header but no data rows; it needs the {task.name.upper()} rows of its split (point "
            f"--data_dir at a folder whose files hold them)."
        )
    for number, fields in rows:
        if len(fields) != len(names):
            raise ValueError(
                f"{path}, line {number}: {len(fields)} fields where the header has {len(names)} ({names}). A tab or "
                f"line break inside a text, or a missing field, shifts the columns: fix that line (a Hugging Face "
                f"export can quote such texts: write it with CSV quoting)."
            )
    index = {name: names.index(name) for name in layout.columns}
    columns = {hub: [fields[index[source]] for _, fields in rows] for source, hub in layout.columns.items()
               if hub != "label"}
    label_source = next(source for source, hub in layout.columns.items() if hub == "label")
    columns["label"] = _labels(task, layout, [(number, fields[index[label_source]]) for number, fields in rows],
                               path, label_source)
    return datasets.Dataset.from_dict(columns)


def _labels(task: GlueTask, layout: Layout, values: list[tuple[int, str]], path: str, column: str) -> list:
    """Label ids (or regression scores) of ``(line number, cell)`` pairs; a bad cell fails naming its line."""
    for number, value in values:
        if not value.strip():
            raise ValueError(
                f"{path}, line {number}: the label (column {column!r}) is empty. Every train and dev row needs a "
                f"label: fill it in or delete the row (GLUE's test files have no labels; they cannot be trained on)."
            )
    if task.is_regression:
        scores = []
        for number, value in values:
            try:
                scores.append(float(value))
            except ValueError:
                raise ValueError(f"{path}, line {number}: the score {value!r} (column {column!r}) is not a number; "
                                 f"{task.name.upper()} scores are floats such as 3.8.") from None
        return scores
    if layout.label_names and not all(value.strip().lstrip("-").isdigit() for _, value in values):
        unknown = sorted({value for _, value in values} - set(layout.label_names))
        if unknown:
            line = next(number for number, value in values if value in unknown)
            raise ValueError(f"{path}: unknown {task.name.upper()} labels {unknown[:5]}; expected "
                             f"{sorted(layout.label_names)} (the first unknown one is on line {line}).")
        return [layout.label_names[value] for _, value in values]
    labels = []
    for number, value in values:
        try:
            label = int(value)
        except ValueError:
            names = f" or one of {sorted(layout.label_names)}" if layout.label_names else ""
            raise ValueError(f"{path}, line {number}: the label {value!r} (column {column!r}) is not a class id "
                             f"0..{task.num_labels - 1}{names}.") from None
        if not 0 <= label < task.num_labels:
            hint = " (-1 marks an unlabelled test row; test files cannot be trained on)" if label == -1 else ""
            raise ValueError(f"{path}, line {number}: the label {label} is outside 0..{task.num_labels - 1} for "
                             f"{task.name.upper()}{hint}; fix the label or delete the row.")
        labels.append(label)
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

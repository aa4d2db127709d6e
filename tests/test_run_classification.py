"""scripts/run_classification.py end to end on small CSV/TSV files written here, with a tiny BERT saved locally."""

import csv
import json
import random
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from builders import load_script, save_tiny_checkpoint
from mmr_transformers import MMRTrainingArguments

run_classification = load_script("run_classification")

CLASSES = {"weather": ["sun", "rain", "snow"], "money": ["card", "cash", "fee"], "travel": ["train", "bus", "flight"]}
FILLER = ["the", "a", "is", "was", "my", "very", "today", "here"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    words = [w for words in CLASSES.values() for w in words] + FILLER
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"), words, num_labels=3)


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def labelled_rows(n, seed):
    """(text, class name): a class word among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name = rng.choice(sorted(CLASSES))
        rows.append((" ".join(rng.sample(FILLER, 3) + [rng.choice(CLASSES[name])]), name))
    return rows


@pytest.fixture
def files(tmp_path):
    """train.csv (60 rows) and dev.csv (24 rows), columns id,text,intent with string labels."""
    written = {}
    for split, n, seed in (("train", 60, 0), ("dev", 24, 1)):
        rows = labelled_rows(n, seed)
        write_csv(tmp_path / f"{split}.csv", ["id", "text", "intent"], [(i, t, y) for i, (t, y) in enumerate(rows)])
        written[split] = rows
    return tmp_path, written


def argv(data_dir, model_dir, out, *extra, train="train.csv", dev="dev.csv"):
    return ["--train_file", str(data_dir / train), "--validation_file", str(data_dir / dev), "--model_name_or_path",
            model_dir, "--output_dir", str(out), "--text_column_names", "text", "--label_column_name", "intent",
            "--per_device_train_batch_size", "8", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true", "--max_seq_length", "16", *extra]


def test_string_labels_train_a_three_way_classifier_whose_saved_metrics_and_margin_diagnostics_match(
        files, model_dir, tmp_path):
    data_dir, written = files
    out = tmp_path / "out"
    results = run_classification.main(argv(data_dir, model_dir, out, "--num_train_epochs", "3", "--eval_strategy",
                                           "epoch", "--margin_diagnostics", "--mmr_alpha", "1e-3",
                                           "--learning_rate", "5e-3", "--logging_steps", "1"))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "money", 1: "travel", 2: "weather"}  # the training labels, sorted
    labels = np.array([model.config.label2id[y] for _, y in written["dev"]])
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(t, truncation=True, max_length=16, return_tensors="pt")).logits
                            for t, _ in written["dev"]])
    predicted = logits.argmax(1).numpy()
    assert len(set(predicted)) > 1  # accuracy and macro F1 say different things
    assert results["eval_accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert results["eval_macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-12)

    records = json.load(open(out / "margin_diagnostics.json"))
    state = json.load(open(out / "trainer_state.json"))
    assert [r["step"] for r in records] == [8, 16, 24]  # 60 rows / 8 per step = 8 steps per epoch, one record each
    assert records[-1]["accuracy"] == pytest.approx(results["eval_accuracy"])  # the same model, the same rows
    top_two = logits.topk(2, dim=1)
    weight = model.classifier.weight.detach()
    phi_to_margin = (top_two.values[:, 0] - top_two.values[:, 1]) / (
        weight[top_two.indices[:, 0]] - weight[top_two.indices[:, 1]]).norm(dim=1)
    assert records[-1]["margin_quantiles"]["q50"] == pytest.approx(torch.quantile(phi_to_margin, 0.5).item(), rel=1e-4, abs=1e-6)
    logged = [entry for entry in state["log_history"] if "margins/q50" in entry]
    assert [entry["step"] for entry in logged] == [8, 16, 24]
    assert any("mmr/penalty" in entry for entry in state["log_history"])


def test_sentence_pairs_from_tsv_with_integer_labels(tmp_path, model_dir):
    rng = random.Random(2)
    for split, n in (("train", 24), ("dev", 8)):
        rows = [(" ".join(rng.sample(FILLER, 3)), " ".join(rng.sample(FILLER, 3)), i % 2) for i in range(n)]
        write_csv(tmp_path / f"{split}.tsv", ["first", "second", "intent"], rows, delimiter="\t")
    results = run_classification.main(argv(tmp_path, model_dir, tmp_path / "out", "--text_column_names", "first, second",
                                           "--max_steps", "2", "--ignore_mismatched_sizes", train="train.tsv",
                                           dev="dev.tsv"))
    assert results["eval_samples"] == 8 and results["train_samples"] == 24
    assert json.load(open(tmp_path / "out" / "run_config.json"))["labels"] == ["0", "1"]
    # the saved model on each dev pair, tokenized as a pair: the reported loss and accuracy
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    dev = [line.split("\t") for line in (tmp_path / "dev.tsv").read_text().splitlines()[1:]]
    labels = torch.tensor([int(y) for _, _, y in dev])
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(a, b, truncation=True, max_length=16, return_tensors="pt")).logits
                            for a, b, _ in dev])
    assert results["eval_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)
    assert results["eval_accuracy"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())
    with torch.no_grad():  # the first text alone scores differently: the check tells pairs from single texts
        alone = torch.cat([model(**tokenizer(a, truncation=True, max_length=16, return_tensors="pt")).logits
                           for a, _, _ in dev])
    assert torch.nn.functional.cross_entropy(alone, labels).item() != pytest.approx(results["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("case, message", [
    ("missing column", "no column ['intent']; its columns are ['id', 'text', 'label']"),
    ("unseen label", "labels ['sports'] never occur in"),
    ("empty label", "1 rows have no 'intent' (the first: data row 4, counting from 1 after any header)"),
    ("empty text", "1 rows have no text in 'text' (the first: data row 2, counting from 1 after any header)"),
    ("formats differ", "must share one format"),
    ("three text columns", "give one column, or two separated by a comma"),
    ("one class", "one class only"),
])
def test_bad_files_and_columns_are_refused_before_training_with_the_reason(files, model_dir, tmp_path, case, message):
    data_dir, written = files
    extra, dev = [], "dev.csv"
    rows = [(i, t, y) for i, (t, y) in enumerate(written["dev"])]
    if case == "missing column":
        write_csv(data_dir / "dev.csv", ["id", "text", "label"], rows)
    elif case == "unseen label":
        write_csv(data_dir / "dev.csv", ["id", "text", "intent"], rows + [(99, "the ball", "sports")])
    elif case == "empty label":
        rows[3] = (3, rows[3][1], "")
        write_csv(data_dir / "dev.csv", ["id", "text", "intent"], rows)
    elif case == "empty text":
        rows[1] = (1, " ", rows[1][2])
        write_csv(data_dir / "dev.csv", ["id", "text", "intent"], rows)
    elif case == "formats differ":
        dev = "dev.tsv"
        write_csv(data_dir / dev, ["id", "text", "intent"], rows, delimiter="\t")
    elif case == "three text columns":
        extra = ["--text_column_names", "text,id,intent"]
    elif case == "one class":
        write_csv(data_dir / "train.csv", ["id", "text", "intent"], [(i, t, "money") for i, (t, _) in enumerate(written["train"])])
        write_csv(data_dir / "dev.csv", ["id", "text", "intent"], [(i, t, "money") for i, (t, _) in enumerate(written["dev"])])
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=re.escape(message)):
        run_classification.main(argv(data_dir, model_dir, out, "--max_steps", "1", *extra, dev=dev))
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


def test_margin_diagnostics_without_evaluations_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eval_strategy='no' runs none"):
        MMRTrainingArguments(output_dir=str(tmp_path), margin_diagnostics=True, eval_strategy="no")


def test_a_tsv_is_read_unquoted_so_a_stray_quote_keeps_its_row(tmp_path):
    lines = ["text\tintent", '"great movie\t1', "fine\t0", 'bad" one\t0']
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    data = run_classification.read_files(run_classification.DataArguments(
        train_file=str(tmp_path / "train.tsv"), validation_file=str(tmp_path / "dev.tsv"), text_column_names="text",
        label_column_name="intent"))
    assert data["train"]["text"] == ['"great movie', "fine", 'bad" one'] and data["validation"]["intent"] == [1, 0, 0]


def test_cells_are_read_as_written_and_1_and_the_string_1_are_one_class(tmp_path, model_dir):
    from mmr_transformers.recipes.text import TextModelArguments, tokenize_splits

    # "None" and "NA" are an intent and a text here, not missing values; train's labels are strings (one is not a
    # number), dev's read as integers; train has a column dev lacks
    write_csv(tmp_path / "train.csv", ["text", "intent", "note"],
              [("NA", "None", "x"), ("my card", "2", "y"), ("the fee", "10", "z"), ("None", "None", "w")])
    write_csv(tmp_path / "dev.csv", ["text", "intent"], [("the cash", 2), ("a fee", 10)])
    args = run_classification.DataArguments(train_file=str(tmp_path / "train.csv"),
                                            validation_file=str(tmp_path / "dev.csv"), label_column_name="intent")
    raw = run_classification.read_files(args)
    assert raw["train"]["text"] == ["NA", "my card", "the fee", "None"]
    encoded, names = run_classification.encode_labels(raw, "intent", {"train": "train.csv", "validation": "dev.csv"})
    assert names == ["10", "2", "None"]  # strings, sorted as strings, since one label is not a number
    assert encoded["train"]["label"] == [2, 1, 0, 2] and encoded["validation"]["label"] == [1, 0]
    tokenized = tokenize_splits(encoded, AutoTokenizer.from_pretrained(model_dir), ["text"], args)
    assert tokenized["train"].column_names == tokenized["validation"].column_names  # each split drops its own extras
    assert set(tokenized["train"].column_names) == {"label", "input_ids", "token_type_ids", "attention_mask"}
    write_csv(tmp_path / "train.csv", ["text", "intent", "label"], [("my card", 2, "x"), ("the fee", 10, "y")])
    encoded, names = run_classification.encode_labels(run_classification.read_files(args), "intent",
                                                      {"train": "train.csv", "validation": "dev.csv"})
    assert names == [2, 10] and encoded["validation"]["label"] == [0, 1]  # all integers: numeric order
    assert encoded["train"]["label"] == [0, 1]  # the file's own 'label' column gave way to --label_column_name's


def test_a_resume_with_other_data_or_seeds_is_refused_by_name(files, model_dir, tmp_path):
    data_dir, _ = files
    out = tmp_path / "out"
    run = argv(data_dir, model_dir, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    first = run_classification.main(run)
    checkpoint = str(out / "checkpoint-2")
    saved = json.load(open(out / "checkpoint-2" / "script_settings.json"))
    assert saved["data.train_file"] == str(data_dir / "train.csv") and saved["seed"] == 42
    assert saved["labels"] == ["money", "travel", "weather"] and "data.max_eval_samples" not in saved
    for extra, change in ((["--max_train_samples", "30"], "data.max_train_samples None -> 30"),
                          (["--seed", "5"], "seed 42 -> 5"), (["--max_seq_length", "8"], "data.max_seq_length 16 -> 8")):
        with pytest.raises(SystemExit, match=re.escape(f"resuming from {checkpoint} with other settings than the run "
                                                       f"it was saved by: {change}.")):
            run_classification.main([*run, *extra, "--resume_from_checkpoint", checkpoint])
    # the same settings (an evaluation cap is not one of them, nor the spelling of a path) resume, and end where the
    # uninterrupted run ended
    json.dump({**first, "eval_mm_accuracy": 0.5}, open(out / "all_results.json", "w"))  # as an older run left it
    respelled = [a.replace(str(data_dir), str(data_dir / ".." / data_dir.name)) for a in run]
    resumed = run_classification.main([*respelled, "--max_eval_samples", "24", "--resume_from_checkpoint", checkpoint])
    assert resumed["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
    assert json.load(open(out / "all_results.json")) == resumed  # this run's results alone

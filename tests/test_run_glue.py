"""scripts/run_glue.py end to end on small GLUE-format files written here, with a tiny BERT saved locally."""

import csv
import json
import os
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from builders import accelerate_launch, load_script
from mmr_transformers.recipes.glue import get_task, glue_metrics, load_local, read_split

run_glue = load_script("run_glue")

WORDS = "the a movie film good bad great awful plot actor is was not very fun dull man dog runs sits cat".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BERT encoder (no classifier, like bert-base-uncased) and a word-level tokenizer built in
    memory, saved like a Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", '"', "'", ".", ",", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)  # transformers 5: vocab=
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, initializer_range=0.5)
    BertModel(config).save_pretrained(path)
    return str(path)


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def write_rows(path, header, rows, quoting=csv.QUOTE_NONE, bom=False, delimiter="\t"):
    """Delimited rows: verbatim (the official GLUE files) or with CSV quoting (a Hugging Face export)."""
    lines = ([header] if header else []) + rows
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        if quoting == csv.QUOTE_NONE:
            f.writelines(delimiter.join(str(v) for v in line) + "\n" for line in lines)
        else:
            csv.writer(f, delimiter=delimiter, quoting=quoting, lineterminator="\n").writerows(lines)


# ---- every local layout, read row by row ----------------------------------------------------------------
#
# Each case: the task, the Hub columns the texts must come back under, how the files are written, and per file
# (header, [(row as written, label id it must come back as)]). The texts of a row come back verbatim from the
# columns named in `text_at`.

LAYOUTS = {
    "sst2": dict(task="sst-2", columns=("sentence",), text_at=(0,), files={
        "train.tsv": (["sentence", "label"], [
            (['it \'s a "charming" and often affecting journey . ', 1], 1),
            (['" unflinchingly bleak and desperate ', 0], 0)]),
        "dev.tsv": (["sentence", "label"], [(["the acting , costumes , music , cinematography are all excellent . ", 1], 1)]),
    }),
    "mrpc": dict(task="mrpc", columns=("sentence1", "sentence2"), text_at=(3, 4), bom=True, files={
        "train.tsv": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [
            (["1", "702876", "702977", '"The foodservice pie business does not fit our long-term growth strategy.',
              "The foodservice pie business doesn't fit our long-term growth strategy."], 1),
            (["0", "2108705", "2108831", "Yucaipa owned Dominick's before selling the chain to Safeway in 1998.",
              'He said "no" twice.'], 0)]),
        "dev.tsv": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [
            (["1", "1", "2", "He said the foodservice pie business doesn 't fit.", '"Quotes" open and close.'], 1)]),
    }),
    "rte": dict(task="rte", columns=("sentence1", "sentence2"), text_at=(1, 2), files={
        "train.tsv": (["index", "sentence1", "sentence2", "label"], [
            (["0", 'He said "no deal".', "No deal was made.", "entailment"], 0),
            (["1", "Dana Reeve, the widow of the actor, died.", "Christopher Reeve had an accident.", "not_entailment"], 1)]),
        "dev.tsv": (["index", "sentence1", "sentence2", "label"], [
            (["0", "The cat sat.", "A cat sat.", "entailment"], 0),
            (["1", "It rained.", "It was dry.", "not_entailment"], 1)]),
    }),
    "rte-hf-tsv": dict(task="rte", columns=("sentence1", "sentence2"), text_at=(0, 1), quoting=csv.QUOTE_MINIMAL, files={
        "train.tsv": (["sentence1", "sentence2", "label", "idx"], [
            (['he said "hi"', "a tab\tinside", "1", "0"], 1),
            (['"quoted at both ends"', "plain", "0", "1"], 0)]),
        "validation.tsv": (["sentence1", "sentence2", "label", "idx"], [(["x, y", 'z "w"', "0", "0"], 0)]),
    }),
    "rte-hf-csv": dict(task="rte", columns=("sentence1", "sentence2"), text_at=(0, 1), quoting=csv.QUOTE_MINIMAL,
                       delimiter=",", files={
        "train.csv": (["sentence1", "sentence2", "label", "idx"], [
            (["commas, inside, text", 'and "quotes"', "1", "0"], 1),
            (["plain", "it's fine", "0", "1"], 0)]),
        "validation.csv": (["sentence1", "sentence2", "label", "idx"], [(['a "b", c', "d", "1", "0"], 1)]),
    }),
    "qnli": dict(task="qnli", columns=("question", "sentence"), text_at=(1, 2), files={
        "train.tsv": (["index", "question", "sentence", "label"], [
            (["0", "When did the war end?", 'It ended in 1945, "officially".', "entailment"], 0),
            (["1", "Who won?", "Nobody knows.", "not_entailment"], 1)]),
        "dev.tsv": (["index", "question", "sentence", "label"], [(["0", "What is it?", "It is a cat.", "entailment"], 0)]),
    }),
    "qqp": dict(task="qqp", columns=("question1", "question2"), text_at=(3, 4), files={
        "train.tsv": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [
            (["133273", "213221", "213222", "How is the life of a math student?", 'What is "life" like for a math student?', "1"], 1),
            (["402555", "536040", "536041", "How do I control my horny emotions?", "How do you train a dog?", "0"], 0)]),
        "dev.tsv": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [
            (["1", "2", "3", "Why?", "Why not?", "0"], 0)]),
    }),
    "mnli": dict(task="mnli", columns=("premise", "hypothesis"), text_at=(8, 9), files={
        "train.tsv": ([
            "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
            "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"], [
            (["0", "31193", "31193n", "government", "( ( Conceptually cream ) skimming )", "( Product ( and geography ) )",
              "(ROOT (S))", "(ROOT (S))", "Conceptually cream skimming has two basic dimensions.",
              "Product and geography are what make cream skimming work. ", "neutral", "neutral"], 1),
            (["1", "101457", "101457e", "telephone", "( you ( know ) )", "( You ( lose ) )", "(ROOT)", "(ROOT)",
              'you know during the season and i guess at "your" level', "You lose the things.", "entailment",
              "entailment"], 0)]),
        "dev_matched.tsv": ([
            "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
            "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"], [
            (["0", "63735", "63735n", "slate", "( a )", "( b )", "(ROOT)", "(ROOT)", "The new rights are nice enough",
              "Everyone really likes the newest benefits ", "neutral", "entailment", "neutral", "neutral", "neutral",
              "neutral"], 1)]),
        "dev_mismatched.tsv": ([
            "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
            "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"], [
            (["0", "75290", "75290c", "letters", "( a )", "( b )", "(ROOT)", "(ROOT)", "Your contribution helped.",
              "Your contributions were of no help.", "contradiction", "contradiction", "contradiction", "contradiction",
              "contradiction", "contradiction"], 2),
            (["1", "133794", "133794c", "verbatim", "( a )", "( b )", "(ROOT)", "(ROOT)", "The answer is 'no'.",
              "The answer is yes.", "contradiction", "contradiction", "contradiction", "neutral", "contradiction",
              "contradiction"], 2)]),
    }),
    "cola": dict(task="cola", columns=("sentence",), text_at=(3,), files={  # official: no header
        "train.tsv": (None, [
            (["gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."], 1),
            (["gj04", "0", "*", "They drank the pub."], 0)]),
        "dev.tsv": (None, [(["cj99", "0", "*", 'Mary said "hello" him.'], 0), (["cj99", "1", "", "Mary left."], 1)]),
    }),
    "stsb": dict(task="sts-b", columns=("sentence1", "sentence2"), text_at=(7, 8), files={
        "train.tsv": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                       "score"], [
            (["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
              "An air plane is taking off.", "5.000"], 5.0),
            (["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", 'A man says "hi".',
              "A man is playing a flute.", "0.750"], 0.75)]),
        "dev.tsv": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                     "score"], [(["0", "g", "f", "y", "0", "s", "s", "A man.", "A woman.", "3.8"], 3.8)]),
    }),
}
SPLIT_OF = {"train": "train", "dev": "validation", "validation": "validation", "dev_matched": "validation_matched",
            "dev_mismatched": "validation_mismatched"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_local_layout_reads_back_the_written_texts_and_label_ids(layout, tmp_path):
    case = LAYOUTS[layout]
    expected = {}
    for name, (header, written) in case["files"].items():
        write_rows(tmp_path / name, header, [row for row, _ in written], quoting=case.get("quoting", csv.QUOTE_NONE),
                   bom=case.get("bom", False), delimiter=case.get("delimiter", "\t"))
        expected[SPLIT_OF[name.rsplit(".", 1)[0]]] = [
            (*(row[i] for i in case["text_at"]), label) for row, label in written]
    data = load_local(get_task(case["task"]), str(tmp_path))
    assert sorted(data) == sorted(expected)
    for split, rows_expected in expected.items():
        assert sorted(data[split].column_names) == sorted([*case["columns"], "label"]), split
        got = [(*(row[c] for c in case["columns"]), row["label"]) for row in data[split]]
        assert got == rows_expected, split
        assert all(type(label) is type(want) for (*_, label), (*_, want) in zip(got, rows_expected)), split


# ---- run_glue.main end to end -----------------------------------------------------------------------------


def write_task(directory, layout, n=40, seed=0):
    """Generated GLUE files of one layout with n train and n//2 dev rows; returns {split: [(text_a, text_b, label id)]}."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    nli3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
    files = {"train": n, "dev": n // 2} if layout != "mnli" else {"train": n, "dev_matched": n // 2, "dev_mismatched": n // 2}
    written = {}
    for name, rows_n in files.items():
        path = os.path.join(directory, f"{name}.tsv")
        pairs = [(sentence(rng), sentence(rng)) for _ in range(rows_n)]
        if layout == "mrpc":  # official: BOM, unbalanced quotes, QUOTE_NONE
            labels = [rng.randint(0, 1) for _ in pairs]
            pairs = [('"' + a, b) for a, b in pairs]
            write_rows(path, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                       [[y, i, i + 1, a, b] for i, ((a, b), y) in enumerate(zip(pairs, labels))], bom=True)
        elif layout == "rte-hf":  # Hugging Face export: CSV quoting, integer labels, idx
            labels = [rng.randint(0, 1) for _ in pairs]
            pairs = [('he said "' + a + '"', b) for a, b in pairs]
            write_rows(path, ["sentence1", "sentence2", "label", "idx"],
                       [[a, b, y, i] for i, ((a, b), y) in enumerate(zip(pairs, labels))], quoting=csv.QUOTE_MINIMAL)
        elif layout == "mnli":
            names = [rng.choice(sorted(nli3)) for _ in pairs]
            labels = [nli3[name] for name in names]
            write_rows(path, ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"],
                       [[i, i, i, "fiction", a, b, "x", y] for i, ((a, b), y) in enumerate(zip(pairs, names))])
        elif layout == "stsb":
            labels = [round(rng.uniform(0, 5), 2) for _ in pairs]
            write_rows(path, ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                              "sentence2", "score"],
                       [[i, "g", "f", "y", i, "s", "s", a, b, y] for i, ((a, b), y) in enumerate(zip(pairs, labels))])
        else:
            raise ValueError(layout)
        written[name] = [(a, b, y) for (a, b), y in zip(pairs, labels)]
    return written


def glue_argv(tmp_path, model_dir, layout, task, *extra):
    """Command-line arguments for one epoch on 40 generated rows of ``layout``; returns them, the written rows and
    the output dir."""
    data_dir = tmp_path / layout
    written = write_task(data_dir, layout)
    out = tmp_path / f"out-{layout}"
    argv = ["--task", task, "--data_dir", str(data_dir), "--model_name_or_path", model_dir, "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--use_cpu", "--report_to", "none",
            "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--max_seq_length", "32", *extra]
    return argv, written, out


def recomputed_metrics(out, rows):
    """Accuracy, binary F1 and mean cross-entropy of the model saved in ``out`` on ``rows`` ((text_a, text_b, label)),
    each row tokenized and predicted on its own; and the predictions."""
    from sklearn.metrics import accuracy_score, f1_score

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    labels = np.array([y for _, _, y in rows])
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(a, b, truncation=True, max_length=32, return_tensors="pt")).logits
                            for a, b, _ in rows])
    predicted = logits.argmax(1).numpy()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    metrics = {"accuracy": accuracy_score(labels, predicted), "loss": loss}
    if logits.shape[1] == 2:
        metrics["f1"] = f1_score(labels, predicted)
    return metrics, predicted


def test_mrpc_end_to_end_reports_the_saved_models_f1_and_accuracy_and_layers_its_settings(tmp_path, model_dir):
    argv, written, out = glue_argv(tmp_path, model_dir, "mrpc", "mrpc", "--selection", "mms", "--selection_ratio", "2",
                                   "--mmr-alpha", "3e-4", "--learning_rate", "3e-5", "--logging_steps", "1")
    results = run_glue.main(argv)
    assert json.load(open(out / "all_results.json")) == pytest.approx(results)
    expected, predicted = recomputed_metrics(out, written["dev"])
    assert 0 < predicted.mean() < 1  # both classes predicted: F1 and accuracy say different things
    assert results["eval_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert results["eval_f1"] == pytest.approx(expected["f1"], abs=1e-12)
    assert results["eval_loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert results["train_samples"] == 40 and results["eval_samples"] == 20
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    assert [h["mmr/samples_trained"] for h in history if "loss" in h] == [8, 8, 4]  # 40 rows scored in 16s, half kept
    assert all(h["mmr/alpha"] == 3e-4 for h in history if "loss" in h)  # the command line wins over mrpc.json
    config = json.load(open(out / "run_config.json"))
    with open(os.path.join(run_glue.CONFIG_DIR, "mrpc.json")) as f:
        file_settings = json.load(f)
    assert (file_settings["mmr_alpha"], file_settings["learning_rate"], file_settings["num_train_epochs"]) == (1e-5, 2e-5, 3)
    training = config["training"]
    assert (training["mmr_alpha"], training["learning_rate"], training["num_train_epochs"]) == (3e-4, 3e-5, 1)  # command line
    assert training["logging_strategy"] == "steps" and config["glue"]["max_seq_length"] == 32  # command line
    assert training["per_device_eval_batch_size"] == file_settings["per_device_eval_batch_size"] == 128  # the file
    assert config["glue"]["hidden_dropout_prob"] is None  # the files leave the model's own dropout (BERT: 0.1)


def test_mnli_end_to_end_reports_matched_and_mismatched_accuracy_of_the_saved_model(tmp_path, model_dir):
    argv, written, out = glue_argv(tmp_path, model_dir, "mnli", "MNLI-mm")  # its own settings file, glue_configs/mnli-mm.json
    results = run_glue.main(argv)
    for prefix, split in [("eval", "dev_matched"), ("eval_mm", "dev_mismatched")]:
        expected, predicted = recomputed_metrics(out, written[split])
        assert len(set(predicted.tolist())) > 1, split  # not one class everywhere
        assert results[f"{prefix}_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12), split
        assert results[f"{prefix}_loss"] == pytest.approx(expected["loss"], rel=1e-4), split
        assert results[f"{prefix}_samples"] == 20
    assert results["eval_loss"] != results["eval_mm_loss"]  # two different files were evaluated
    config = json.load(open(out / "run_config.json"))
    assert config["training"]["mmr_alpha"] == 1e-6  # the thesis' alpha for MNLI-mm
    assert config["task"] == "mnli-mm"  # so its runs are not read as MNLI-m's


@pytest.mark.distributed
def test_accelerate_launch_trains_on_two_processes_and_exits_cleanly(tmp_path, model_dir):
    """The README's ``accelerate launch scripts/run_glue.py``, two CPU processes over gloo. Each rank scores its own
    candidate batch of k·b = 16 rows, so an epoch of 40 rows takes ceil(40 / 32) = 2 steps (3 in one process), and
    every process must exit 0 after rank 0 wrote the results."""
    argv, written, out = glue_argv(tmp_path, model_dir, "rte-hf", "rte", "--selection", "mms", "--selection_ratio", "2",
                                   "--mmr-alpha", "1e-2", "--logging_steps", "1")
    accelerate_launch(run_glue.__file__, argv)
    results = json.load(open(out / "all_results.json"))
    assert results["train_samples"] == 40 and results["eval_samples"] == 20
    expected, _ = recomputed_metrics(out, written["dev"])
    assert results["eval_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    state = json.load(open(out / "trainer_state.json"))
    assert state["global_step"] == 2
    assert sum("mmr/penalty" in h for h in state["log_history"]) == 2  # MMR ran in the distributed steps


def test_a_regression_task_with_mmr_fails_with_a_message_and_its_config_turns_mmr_off(tmp_path, model_dir):
    argv, _, _ = glue_argv(tmp_path, model_dir, "stsb", "stsb", "--mmr_alpha", "1e-5")
    with pytest.raises(SystemExit, match="STSB is a regression task .* --mmr_alpha 0 --selection none"):
        run_glue.main(argv)
    _, training_args = run_glue.parse_args(["--task", "stsb", "--output_dir", str(tmp_path / "o"), "--use_cpu"])
    assert training_args.mmr_alpha == 0.0 and training_args.selection == "none"  # glue_configs/stsb.json
    run_glue.check_task_settings(get_task("stsb"), training_args)  # accepted as it is


def test_a_directory_with_the_wrong_columns_names_what_it_expected(tmp_path, model_dir):
    data_dir = tmp_path / "bad"
    os.makedirs(data_dir)
    for split in ("train", "dev"):
        write_rows(data_dir / f"{split}.tsv", ["text", "target"], [["good movie", 1]])
    with pytest.raises(ValueError, match=r"train.tsv does not look like a RTE file: its header is \['text', 'target'\].*"
                                         r"\['index', 'label', 'sentence1', 'sentence2'\] or \['label', 'sentence1', 'sentence2'\]"):
        run_glue.main(["--task", "rte", "--data_dir", str(data_dir), "--model_name_or_path", model_dir,
                       "--output_dir", str(tmp_path / "o"), "--use_cpu"])


def test_a_directory_without_the_split_files_lists_what_it_found(tmp_path):
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no train file for MRPC in .*expected one of \['train.tsv', 'train.csv'\], found \['readme.txt'\]"):
        load_local(get_task("mrpc"), str(tmp_path / "empty"))


def test_unknown_string_labels_are_refused(tmp_path):
    write_rows(tmp_path / "train.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "maybe"]])
    with pytest.raises(ValueError, match=r"unknown RTE labels \['maybe'\]; expected \['entailment', 'not_entailment'\]"):
        read_split(get_task("rte"), str(tmp_path / "train.tsv"))


def test_metrics_match_scikit_learn_and_scipy_definitions():
    from scipy.stats import pearsonr
    from sklearn.metrics import f1_score, matthews_corrcoef

    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 2, generator=rng).numpy()
    labels = torch.randint(0, 2, (50,), generator=rng).numpy()
    predicted = logits.argmax(1)
    assert glue_metrics(get_task("mrpc"), logits, labels) == {
        "f1": pytest.approx(f1_score(labels, predicted)), "accuracy": pytest.approx((predicted == labels).mean())}
    assert glue_metrics(get_task("cola"), logits, labels)["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, predicted))
    scores = torch.randn(50, 1, generator=rng).numpy()
    targets = scores[:, 0] + torch.randn(50, generator=rng).numpy()
    assert glue_metrics(get_task("sts-b"), scores, targets)["pearson"] == pytest.approx(pearsonr(scores[:, 0], targets)[0])


def test_unknown_task_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown GLUE task 'imdb'; choose one of \['cola', 'mnli'"):
        get_task("imdb")


def test_a_checkpoint_trained_on_the_tasks_classes_in_another_order_keeps_its_predictions(tmp_path, caplog):
    import logging

    from builders import save_tiny_checkpoint
    from mmr_transformers.recipes.text import TextModelArguments, load_sequence_classifier

    path = save_tiny_checkpoint(tmp_path, ["a", "b", "c"], num_labels=3)
    original = AutoModelForSequenceClassification.from_pretrained(path).eval()
    hub_order = ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]  # roberta-large-mnli's head
    original.config.id2label = dict(enumerate(hub_order))
    original.config.label2id = {name: i for i, name in enumerate(hub_order)}
    original.save_pretrained(path)
    inputs = {"input_ids": torch.tensor([[2, 6, 7, 8, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    before = original(**inputs).logits[0]
    mnli = list(get_task("mnli").labels)
    with caplog.at_level(logging.INFO):
        _, model = load_sequence_classifier(TextModelArguments(model_name_or_path=path, max_seq_length=16), "-", mnli)
    after = model.eval()(**inputs).logits[0]
    # class i of the task is the checkpoint's row of the same name: entailment was its row 2
    assert torch.equal(after, before[[2, 1, 0]]) and not torch.equal(after, before)
    assert model.config.id2label == dict(enumerate(mnli)) and "rows are reordered to" in caplog.text
    _, model = load_sequence_classifier(  # a head of the same size is loaded as it is, so it is reordered too
        TextModelArguments(model_name_or_path=path, max_seq_length=16, ignore_mismatched_sizes=True), "-", mnli)
    assert torch.equal(model.eval()(**inputs).logits[0], before[[2, 1, 0]])
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # other classes: nothing to align, said, and the task's names saved
        _, model = load_sequence_classifier(TextModelArguments(model_name_or_path=path, max_seq_length=16), "-", ["a", "b", "c"])
    assert torch.equal(model.eval()(**inputs).logits[0], before) and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert "was trained for the classes ['CONTRADICTION', 'NEUTRAL', 'ENTAILMENT']; its rows now learn" in caplog.text

"""scripts/run_glue.py end to end on small GLUE-format files written here, with a tiny BERT saved locally."""

import csv
import json
import os
import random

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

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
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return str(path)


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def write_rows(path, header, rows, quoting=csv.QUOTE_NONE, bom=False):
    """Tab-separated rows: verbatim (the official GLUE files) or with CSV quoting (a Hugging Face export)."""
    lines = ([header] if header else []) + rows
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        if quoting == csv.QUOTE_NONE:
            f.writelines("\t".join(str(v) for v in line) + "\n" for line in lines)
        else:
            csv.writer(f, delimiter="\t", quoting=quoting, lineterminator="\n").writerows(lines)


def write_task(directory, layout, n=40, seed=0):
    """GLUE files of one layout with n train and n//2 dev rows; returns the task name."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    splits = {"train": n, "dev": n // 2}
    nli3 = ["entailment", "neutral", "contradiction"]
    for split, rows_n in splits.items():
        files = [split] if not (layout == "mnli" and split == "dev") else ["dev_matched", "dev_mismatched"]
        for name in files:
            p = os.path.join(directory, f"{name}.tsv")
            if layout == "sst2":
                write_rows(p, ["sentence", "label"], [[sentence(rng) + " ", rng.randint(0, 1)] for _ in range(rows_n)])
            elif layout == "mrpc":  # official: BOM, unbalanced quotes, QUOTE_NONE
                write_rows(p, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                           [[rng.randint(0, 1), i, i + 1, '"' + sentence(rng), sentence(rng)] for i in range(rows_n)], bom=True)
            elif layout == "rte-hf":  # Hugging Face export: CSV quoting, integer labels, idx
                write_rows(p, ["sentence1", "sentence2", "label", "idx"],
                           [['he said "' + sentence(rng) + '"', sentence(rng), rng.randint(0, 1), i] for i in range(rows_n)],
                           quoting=csv.QUOTE_MINIMAL)
            elif layout == "rte":  # official: string labels
                write_rows(p, ["index", "sentence1", "sentence2", "label"],
                           [[i, sentence(rng), sentence(rng), rng.choice(["entailment", "not_entailment"])] for i in range(rows_n)])
            elif layout == "qnli":
                write_rows(p, ["index", "question", "sentence", "label"],
                           [[i, sentence(rng), sentence(rng), rng.choice(["entailment", "not_entailment"])] for i in range(rows_n)])
            elif layout == "qqp":
                write_rows(p, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                           [[i, 2 * i, 2 * i + 1, sentence(rng), sentence(rng), rng.randint(0, 1)] for i in range(rows_n)])
            elif layout == "mnli":
                write_rows(p, ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"],
                           [[i, i, i, "fiction", sentence(rng), sentence(rng), "x", rng.choice(nli3)] for i in range(rows_n)])
            elif layout == "cola":  # official: no header
                write_rows(p, None, [["src", rng.randint(0, 1), "", sentence(rng)] for _ in range(rows_n)])
            elif layout == "stsb":
                write_rows(p, ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                               "sentence2", "score"],
                           [[i, "g", "f", "y", i, "s", "s", sentence(rng), sentence(rng), round(rng.uniform(0, 5), 2)]
                            for i in range(rows_n)])
    return {"rte-hf": "rte"}.get(layout, layout)


def glue_argv(tmp_path, model_dir, layout, *extra):
    """Command-line arguments for one epoch on 40 generated rows of ``layout``; returns them and the output dir."""
    data_dir = tmp_path / layout
    task = write_task(data_dir, layout)
    out = tmp_path / f"out-{layout}"
    argv = ["--task", task, "--data_dir", str(data_dir), "--model_name_or_path", model_dir, "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--use_cpu", "--report_to", "none",
            "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--max_seq_length", "32", *extra]
    return argv, out


def run(tmp_path, model_dir, layout, *extra):
    argv, out = glue_argv(tmp_path, model_dir, layout, *extra)
    run_glue.main(argv)
    return json.load(open(out / "all_results.json")), json.load(open(out / "run_config.json")), out


@pytest.mark.parametrize("layout, metric_keys", [
    ("sst2", ["eval_accuracy"]),
    ("mrpc", ["eval_f1", "eval_accuracy"]),
    ("rte-hf", ["eval_accuracy"]),
    ("rte", ["eval_accuracy"]),
    ("qnli", ["eval_accuracy"]),
    ("qqp", ["eval_f1", "eval_accuracy"]),
    ("mnli", ["eval_accuracy", "eval_mm_accuracy"]),
    ("cola", ["eval_matthews_correlation"]),
])
def test_runs_end_to_end_for_each_input_layout(tmp_path, model_dir, layout, metric_keys):
    results, config, out = run(tmp_path, model_dir, layout, "--selection", "mms", "--selection_ratio", "2")
    for key in metric_keys:
        assert 0.0 <= results[key] <= 1.0 or key == "eval_matthews_correlation"
    assert results["train_samples"] == 40 and results["eval_samples"] == 20
    assert results["train_loss"] > 0
    assert (out / "trainer_state.json").exists() and (out / "model.safetensors").exists()


def test_accelerate_launch_trains_on_two_processes_and_exits_cleanly(tmp_path, model_dir):
    """The README's ``accelerate launch scripts/run_glue.py``, two CPU processes over gloo. Each rank scores its own
    candidate batch of k·b = 16 rows, so an epoch of 40 rows takes ceil(40 / 32) = 2 steps (3 in one process), and
    every process must exit 0 after rank 0 wrote the results."""
    argv, out = glue_argv(tmp_path, model_dir, "rte-hf", "--selection", "mms", "--selection_ratio", "2",
                          "--mmr-alpha", "1e-2", "--logging_steps", "1")
    accelerate_launch(run_glue.__file__, argv)
    results = json.load(open(out / "all_results.json"))
    assert results["train_samples"] == 40 and results["eval_samples"] == 20 and 0 <= results["eval_accuracy"] <= 1
    state = json.load(open(out / "trainer_state.json"))
    assert state["global_step"] == 2
    assert sum("mmr/penalty" in h for h in state["log_history"]) == 2  # MMR ran in the distributed steps


def test_glue_configs_sit_under_the_command_line(tmp_path, model_dir):
    _, config, out = run(tmp_path, model_dir, "rte-hf", "--mmr-alpha", "3e-4", "--logging_steps", "1")
    training = config["training"]
    with open(os.path.join(run_glue.CONFIG_DIR, "rte.json")) as f:
        file_settings = json.load(f)
    assert training["learning_rate"] == file_settings["learning_rate"] == 2e-5  # from the file
    assert training["mmr_alpha"] == 3e-4  # the command line wins
    assert training["num_train_epochs"] == 1
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    assert any(h.get("mmr/alpha") == 3e-4 for h in history)


def test_mnli_mismatched_config_uses_the_thesis_alpha(tmp_path, model_dir):
    _, config, _ = run(tmp_path, model_dir, "mnli", "--config_file", os.path.join(run_glue.CONFIG_DIR, "mnli-mm.json"))
    assert config["training"]["mmr_alpha"] == 1e-6 and config["task"] == "mnli"


def test_regression_task_with_mmr_fails_with_a_message(tmp_path, model_dir):
    with pytest.raises(SystemExit, match="STSB is a regression task .* --mmr_alpha 0 --selection none"):
        run(tmp_path, model_dir, "stsb", "--mmr_alpha", "1e-5")
    results, _, _ = run(tmp_path, model_dir, "stsb")  # glue_configs/stsb.json turns MMR off
    assert -1.0 <= results["eval_pearson"] <= 1.0 and "eval_spearmanr" in results


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


def test_mrpc_quotes_are_read_verbatim(tmp_path):
    write_task(tmp_path / "mrpc", "mrpc", n=10)
    data = read_split(get_task("mrpc"), str(tmp_path / "mrpc" / "train.tsv"))
    assert len(data) == 10 and all(s.startswith('"') for s in data["sentence1"])


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

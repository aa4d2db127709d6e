"""A real two-process run (Accelerate, gloo on CPU) agrees with the single-process math.

Two processes each score their own candidate batch, keep its lowest-MMS half and average gradients.
A single process with gradient accumulation 2 over the same two candidate batches must select the
same rows, log the same loss and end with the same weights.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import distributed_run
from builders import accelerate_launch, tiny_model

pytestmark = pytest.mark.distributed

SCRIPT = distributed_run.__file__
COMMON = ["--per_device_train_batch_size", "4", "--selection", "mms", "--selection_ratio", "2", "--mmr_alpha", "0.5",
          "--max_steps", "4", "--learning_rate", "1e-2", "--logging_steps", "1", "--train_sampling_strategy", "sequential",
          "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--seed", "11"]


def single_process(argv):
    """The reference run: in this process, with one thread like each launched process (intra-op threads change
    float sums in the last bits, which Adam's m/sqrt(v) turns into visible steps on near-zero gradients)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        distributed_run.main([*argv, "--gradient_accumulation_steps", "2"])
    finally:
        torch.set_num_threads(threads)


def read(output_dir, ranks):
    selections = [json.load(open(output_dir / f"selections-rank{r}.json")) for r in range(ranks)]
    losses = [h["loss"] for h in json.load(open(output_dir / "log_history.json")) if "loss" in h]
    return selections, losses, load_file(str(output_dir / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    accelerate_launch(SCRIPT, [*COMMON, "--output_dir", str(base / "two")])
    single_process([*COMMON, "--output_dir", str(base / "one")])
    return read(base / "two", 2), read(base / "one", 1)


def test_each_process_selects_what_the_accumulated_single_process_run_selects(runs):
    (two_sel, _, _), (one_sel, _, _) = runs
    assert [len(s) for s in two_sel] == [4, 4] and len(one_sel[0]) == 8
    for step in range(4):
        for rank in range(2):
            distributed = two_sel[rank][step]
            single = one_sel[0][2 * step + rank]
            assert distributed["step"] == single["step"] == step
            assert distributed["selected"] == single["selected"]
    rows_per_step = [set(map(tuple, two_sel[0][s]["selected"])) | set(map(tuple, two_sel[1][s]["selected"])) for s in range(4)]
    assert all(len(rows) == 8 for rows in rows_per_step)  # the ranks trained on disjoint rows


def test_loss_and_weights_agree_with_the_single_process_run(runs):
    (_, two_losses, two_weights), (_, one_losses, one_weights) = runs
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    assert two_weights.keys() == one_weights.keys()
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-6)
    initial = tiny_model("bert", dropout=False, initializer_range=1.0).state_dict()
    assert not torch.allclose(initial["classifier.weight"], two_weights["classifier.weight"], atol=1e-3)


CACHED = ["--selection_source", "cached", "--selection_exploration", "0.25", "--max_steps", "6"]


@pytest.fixture(scope="module")
def cached_runs(tmp_path_factory):
    """Cached selection, 64 samples, k = 2, global batch 8: 4 steps per pass, so step 5 is in the second pass."""
    _, two, one = two_processes_and_one(tmp_path_factory, "cached", CACHED)
    return two, one


def test_two_processes_keep_one_cache_and_select_the_single_process_global_batches(cached_runs):
    two, one = cached_runs
    assert two[0]["cached_scores"] == two[1]["cached_scores"]  # bit-identical caches on both ranks
    torch.testing.assert_close(torch.tensor(two[0]["cached_scores"]).nan_to_num(9),
                               torch.tensor(one["cached_scores"]).nan_to_num(9), rtol=1e-4, atol=1e-6)
    distinct = {tuple(row) for batch in one["trained"] for row in batch}
    assert sum(s == s for s in one["cached_scores"]) == len(distinct) > 32  # one score per sample trained on
    for step in range(6):
        ranks = [set(map(tuple, two[r]["trained"][step])) for r in range(2)]
        assert not ranks[0] & ranks[1]  # no input trained twice, none moved between ranks
        single = set(map(tuple, one["trained"][2 * step])) | set(map(tuple, one["trained"][2 * step + 1]))
        assert ranks[0] | ranks[1] == single, step


# ---- uneven data: 50 samples, 2 processes × 8 candidates per step, so the last round holds 2 real candidates ----

UNEVEN = ["--num_samples", "50", "--max_steps", "-1", "--num_train_epochs", "1"]


def trained_rows(run):
    return [{tuple(row) for row in batch} for batch in run["trained"]]


def two_processes_and_one(tmp_path_factory, name, argv, launched_only=()):
    """Run ``argv`` on two launched processes and in this process with accumulation 2; return the folder and the
    rows each trained (``trained-rank{R}.json``): ([rank 0's, rank 1's], the single process's)."""
    base = tmp_path_factory.mktemp(name)
    accelerate_launch(SCRIPT, [*COMMON, *argv, *launched_only, "--output_dir", str(base / "two")])
    single_process([*COMMON, *argv, "--output_dir", str(base / "one")])
    two = [json.load(open(base / "two" / f"trained-rank{r}.json")) for r in range(2)]
    return base, two, json.load(open(base / "one" / "trained-rank0.json"))


@pytest.fixture(scope="module")
def uneven_runs(tmp_path_factory):
    return two_processes_and_one(tmp_path_factory, "uneven", UNEVEN, launched_only=["--check_stream_refusal", "true"])


def test_uneven_data_trains_only_real_candidates_as_one_process_would(uneven_runs):
    base, two, one = uneven_runs
    assert [len(b) for b in two[0]["trained"]] == [4, 4, 4, 1] and [len(b) for b in two[1]["trained"]] == [4, 4, 4, 0]
    assert [len(b) for b in one["trained"]] == [4, 4, 4, 4, 4, 4, 1]  # ceil(2 / k) = 1 row of the 2 real candidates
    for step in range(4):
        single = set().union(*trained_rows(one)[2 * step: 2 * step + 2])
        assert trained_rows(two[0])[step] | trained_rows(two[1])[step] == single, step
    every = [row for run in two for batch in run["trained"] for row in map(tuple, batch)]
    assert len(every) == len(set(every)) == 25  # no repeats from the start of the epoch
    (_, two_losses, two_weights), (_, one_losses, one_weights) = read(base / "two", 2), read(base / "one", 1)
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-6)
    logs = [h for h in json.load(open(base / "two" / "log_history.json")) if "loss" in h]
    assert [h["mmr/samples_trained"] for h in logs] == [8, 8, 8, 1] and logs[-1]["mmr/samples_scored"] == 2


@pytest.fixture(scope="module")
def uneven_loss_func_runs(tmp_path_factory):
    return two_processes_and_one(tmp_path_factory, "uneven-loss-func", [*UNEVEN, "--mean_loss_func", "true"])


def test_uneven_data_with_a_compute_loss_func_ends_where_one_process_ends(uneven_loss_func_runs):
    """A compute_loss_func's loss is divided by the step's real labels over both processes (num_items_in_batch), so
    the last step, where rank 1 holds a placeholder, must not scale it up again; R, a batch mean, still is."""
    base, two, one = uneven_loss_func_runs
    assert [len(b) for b in two[1]["trained"]] == [4, 4, 4, 0] and [len(b) for b in one["trained"]][-1] == 1
    (_, two_losses, two_weights), (_, one_losses, one_weights) = read(base / "two", 2), read(base / "one", 1)
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-6)


def test_several_processes_over_an_iterable_dataset_are_refused_without_drop_last(uneven_runs):
    for rank in range(2):
        message = (uneven_runs[0] / "two" / f"stream-refusal-rank{rank}.txt").read_text()
        assert "cannot tell them apart" in message and "Set dataloader_drop_last=True" in message


@pytest.fixture(scope="module")
def uneven_cached_runs(tmp_path_factory):
    cached = [*UNEVEN, "--num_train_epochs", "3", "--selection_source", "cached", "--selection_exploration", "0.25"]
    return two_processes_and_one(tmp_path_factory, "uneven-cached", cached)


def test_uneven_data_with_cached_selection_trains_each_pass_as_one_process_would(uneven_cached_runs):
    base, two, one = uneven_cached_runs
    # a pass trains ceil(50 / 2) = 25 samples: 6 batches of 4 and one of 1, i.e. 4 steps on two processes
    assert len(two[0]["trained"]) == 12 and len(one["trained"]) == 21
    single = iter(trained_rows(one))
    for step in range(12):
        real = 2 if step % 4 < 3 else 1  # the last step of each pass has one real micro-batch
        expected = set().union(*(next(single) for _ in range(real)))
        assert trained_rows(two[0])[step] | trained_rows(two[1])[step] == expected, step
    for p in range(3):
        rows = [row for run in two for batch in run["trained"][4 * p: 4 * p + 4] for row in map(tuple, batch)]
        assert len(rows) == len(set(rows)) == 25, p
    assert two[0]["cached_scores"] == two[1]["cached_scores"]
    (_, two_losses, two_weights), (_, one_losses, one_weights) = read(base / "two", 2), read(base / "one", 1)
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-6)

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
    base = tmp_path_factory.mktemp("cached")
    accelerate_launch(SCRIPT, [*COMMON, *CACHED, "--output_dir", str(base / "two")])
    single_process([*COMMON, *CACHED, "--output_dir", str(base / "one")])
    two = [json.load(open(base / "two" / f"trained-rank{r}.json")) for r in range(2)]
    return two, json.load(open(base / "one" / "trained-rank0.json"))


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

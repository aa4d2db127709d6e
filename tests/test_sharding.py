"""MMR and MMS under FSDP2 (torch's fully_shard through Accelerate) on two CPU processes over gloo.

Accelerate turns FSDP on only for accelerator setups; ``distributed_run.allow_fsdp_on_cpu`` is the smallest patch of
its state that keeps the FSDP plugin on CPU processes (said plainly there). The sharded run must select the same
rows, log the same loss and penalty, and end with the same weights as one unsharded process with gradient
accumulation 2 over the same candidate batches. Tolerance: fp32 reduction order (FSDP reduce-scatters gradients in
another order than one process sums them): 1e-5 relative on losses, 1e-5 absolute on weights. SGD, because Adam
turns last-bit differences of near-zero gradients (attention key biases) into full-size steps.
"""

import json

import pytest
import torch

from builders import accelerate_launch
from test_distributed import COMMON, SCRIPT, read, single_process

pytestmark = pytest.mark.distributed

WRAPPINGS = {
    # the head in its own FSDP unit, its weight freed after every forward: the hardest case for margins
    "head-own-unit-reshard": {"version": 2, "reshard_after_forward": True,
                              "transformer_layer_cls_to_wrap": ["BertLayer", "Linear"]},
    # the head in the root unit, kept unsharded between forward and backward
    "head-in-root-no-reshard": {"version": 2, "reshard_after_forward": False,
                                "transformer_layer_cls_to_wrap": ["BertLayer"]},
}
SGD = ["--optim", "sgd"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("unsharded")
    single_process([*COMMON, *SGD, "--output_dir", str(out)])
    return read(out, 1), json.load(open(out / "log_history.json"))


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_fsdp2_selects_penalizes_and_steps_as_one_unsharded_process(wrapping, single, tmp_path):
    accelerate_launch(SCRIPT, [*COMMON, *SGD, "--fsdp_on_cpu", "true", "--fsdp", "full_shard",
                               "--fsdp_config", json.dumps(WRAPPINGS[wrapping]), "--output_dir", str(tmp_path)])
    (two_sel, two_losses, two_weights), history = read(tmp_path, 2), json.load(open(tmp_path / "log_history.json"))
    (one_sel, one_losses, one_weights), one_history = single
    for step in range(4):
        for rank in range(2):
            assert two_sel[rank][step]["selected"] == one_sel[0][2 * step + rank]["selected"], (step, rank)
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    penalties = [h["mmr/penalty"] for h in history if "loss" in h]
    assert penalties == pytest.approx([h["mmr/penalty"] for h in one_history if "loss" in h], rel=1e-5)
    assert two_weights.keys() == one_weights.keys()
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=0, atol=1e-5)
    assert (two_weights["classifier.weight"] - one_weights["classifier.weight"]).abs().max() < 1e-5


def test_fsdp2_in_bf16_computes_margins_and_the_penalty_in_fp32(single, tmp_path):
    """bf16 parameters and activations (Accelerate's MixedPrecisionPolicy): the penalty is computed in fp32 from the
    bf16 weight and features, so it is not a bf16 number, and it stays within bf16 input rounding of the fp32 run's."""
    accelerate_launch(SCRIPT, [*COMMON, *SGD, "--bf16", "--check_int8_refusal", "true", "--fsdp_on_cpu", "true", "--fsdp", "full_shard",
                               "--fsdp_config", json.dumps(WRAPPINGS["head-own-unit-reshard"]),
                               "--output_dir", str(tmp_path)])
    (two_sel, two_losses, _), history = read(tmp_path, 2), json.load(open(tmp_path / "log_history.json"))
    (one_sel, one_losses, _), one_history = single
    penalties = [h["mmr/penalty"] for h in history if "loss" in h]
    assert penalties == pytest.approx([h["mmr/penalty"] for h in one_history if "loss" in h], rel=2e-2)
    assert all(p != float(torch.tensor(p).bfloat16()) for p in penalties)  # fp32 arithmetic, not bf16
    assert any(loss == float(torch.tensor(loss).bfloat16()) for loss in two_losses)  # the model really ran in bf16
    assert [two_sel[r][0]["selected"] for r in range(2)] == [one_sel[0][r]["selected"] for r in range(2)]
    for rank in range(2):  # the int8 scorer quantizes a whole model copy, which no process of a sharded model holds
        assert "a sharded model (FSDP, DeepSpeed ZeRO-3) does not hold" in (tmp_path / f"int8-refusal-rank{rank}.txt").read_text()

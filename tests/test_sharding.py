"""MMR and MMS under FSDP2 (torch's fully_shard) and FSDP1 (FullyShardedDataParallel), through Accelerate, on two CPU
processes over gloo.

Accelerate turns FSDP on only for accelerator setups; ``distributed_run.allow_fsdp_on_cpu`` is the smallest patch of
its state that keeps the FSDP plugin on CPU processes (said plainly there; for FSDP1 it also gives the device as
``cpu``, not ``cpu:0``, and the config sets ``sync_module_states: false``, which Accelerate refuses on CPU). Each
process must hold about half of the parameters after training (the run was sharded). The sharded run must select the same
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
    # FSDP1, the head in its own unit, its weight a view into a FlatParameter freed after every forward
    "fsdp1-full-shard-flat-params-head-own-unit": {
        "version": 1, "use_orig_params": False, "sync_module_states": False,
        "transformer_layer_cls_to_wrap": ["BertLayer", "Linear"]},
    # FSDP1, parameters kept unsharded from forward to backward, the original parameters exposed as shard views
    "fsdp1-shard-grad-op-orig-params-head-in-root": {
        "version": 1, "use_orig_params": True, "sync_module_states": False,
        "transformer_layer_cls_to_wrap": ["BertLayer"]},
}
# FSDP1's strategy: Accelerate 1.16's plugin takes it from FSDP_SHARDING_STRATEGY (what `accelerate launch
# --fsdp_sharding_strategy` sets) and ignores fsdp_config's reshard_after_forward when that is unset
FSDP1_STRATEGY = {"fsdp1-full-shard-flat-params-head-own-unit": "FULL_SHARD",
                  "fsdp1-shard-grad-op-orig-params-head-in-root": "SHARD_GRAD_OP"}
SGD = ["--optim", "sgd"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("unsharded")
    single_process([*COMMON, *SGD, "--output_dir", str(out)])
    return read(out, 1), json.load(open(out / "log_history.json"))


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_fsdp_selects_penalizes_and_steps_as_one_unsharded_process(wrapping, single, tmp_path):
    strategy = FSDP1_STRATEGY.get(wrapping)
    accelerate_launch(SCRIPT, [*COMMON, *SGD, "--fsdp_on_cpu", "true", "--fsdp", "full_shard",
                               "--fsdp_config", json.dumps(WRAPPINGS[wrapping]), "--output_dir", str(tmp_path)],
                      env={"FSDP_SHARDING_STRATEGY": strategy} if strategy else None)
    (two_sel, two_losses, two_weights), history = read(tmp_path, 2), json.load(open(tmp_path / "log_history.json"))
    (one_sel, one_losses, one_weights), one_history = single
    full = sum(w.numel() for w in one_weights.values())
    for rank in range(2):  # sharded: each process holds half the elements (plus FSDP1's padding of flat parameters)
        applied = json.load(open(tmp_path / f"trained-rank{rank}.json"))
        assert 0.4 * full < applied["parameters_held"] < 0.6 * full, (rank, applied["parameters_held"], full)
        expected = strategy and f"{strategy} use_orig_params={WRAPPINGS[wrapping]['use_orig_params']}"
        assert applied["fsdp1"] == expected
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


# relative bound on the penalty against the fp32 run's after 4 steps of drifting low-precision weights (measured: fp16
# 2.9e-3; fp16 has 3 more mantissa bits than bf16)
LOW_PRECISION = {"bf16": (torch.bfloat16, 2e-2), "fp16": (torch.float16, 1e-2)}


@pytest.mark.parametrize("precision", sorted(LOW_PRECISION))
def test_fsdp2_in_low_precision_computes_margins_and_the_penalty_in_fp32(precision, single, tmp_path):
    """bf16 or fp16 parameters and activations (Accelerate's MixedPrecisionPolicy, gradients reduce-scattered in that
    dtype over gloo): the penalty is computed in fp32 from the low-precision weight and features (the arithmetic:
    test_hardening), and it stays within input rounding of the fp32 run's. Accelerate scales fp16 losses only on
    an accelerator (no GradScaler on CPU): loss scaling is checked by the GPU script."""
    dtype, bound = LOW_PRECISION[precision]
    accelerate_launch(SCRIPT, [*COMMON, *SGD, f"--{precision}", "--check_int8_refusal", "true", "--fsdp_on_cpu", "true",
                               "--fsdp", "full_shard", "--fsdp_config", json.dumps(WRAPPINGS["head-own-unit-reshard"]),
                               "--output_dir", str(tmp_path)])
    two_sel, history = read(tmp_path, 2)[0], json.load(open(tmp_path / "log_history.json"))
    one_sel, one_history = single[0][0], single[1]
    penalties = [h["mmr/penalty"] for h in history if "loss" in h]
    assert penalties == pytest.approx([h["mmr/penalty"] for h in one_history if "loss" in h], rel=bound)
    for rank in range(2):  # the model ran in bf16/fp16; R took the weight and features in it and returned fp32
        applied = json.load(open(tmp_path / f"trained-rank{rank}.json"))
        assert applied["logits_dtypes"] == [str(dtype)]
        assert applied["penalty_dtypes"] == [f"weight {dtype}, features {dtype} -> torch.float32"]
    assert [two_sel[r][0]["selected"] for r in range(2)] == [one_sel[0][r]["selected"] for r in range(2)]
    for rank in range(2):  # the int8 scorer quantizes a whole model copy, which no process of a sharded model holds
        assert "a sharded model (FSDP, DeepSpeed ZeRO-3) does not hold" in (tmp_path / f"int8-refusal-rank{rank}.txt").read_text()

"""DeepSpeed ZeRO-2 and ZeRO-3, in fp32 and bf16, on this CPU, one process over gloo: ``find_classifier(model).capture()``
sees the full weight inside the forward (under ZeRO-3 the parameter is partitioned, shape ``(0,)`` between
forwards; under ZeRO-2 it stays whole), MMR's penalty on it equals the unsharded model's, ``select_rows`` through the
engine keeps the unsharded model's rows, and one ``engine.backward(loss + alpha·R)`` plus a step gives the weights of
an unsharded torch SGD step.

    python benchmarks/deepspeed_cpu_check.py

Each check prints one line (``ok`` or ``FAILED``, the configuration, the numbers and the tolerance); the exit code is
non-zero when one fails. The reference is the same model unsharded, in the engine's dtype (bf16: its weights rounded
to bf16, as DeepSpeed's bf16 holds them, with fp32 master weights that the SGD step updates). Tolerances: the
captured weight and the features must equal the unsharded ones exactly (the same values, gathered, not recomputed);
the penalty 1e-6 relative (fp32 arithmetic, sums taken in another order); the stepped weights 1e-6 absolute in fp32
(ZeRO's flat buffers sum in another order). In bf16 the classifier's step must be within one bf16 step of the weight
(2^-7 relative) of the unsharded bf16 step, and every parameter as close to the exact fp32 step (from the same bf16
weights) as the unsharded bf16 step is, within a factor 2: ZeRO-3 computes linear layers' gradients with its own
autograd function, so their bf16 rounding differs (by up to 17% of the unsharded bf16 error, measured). fp16 is not checked here: DeepSpeed's CPU
accelerator refuses it on CPUs without AVX512-FP16/AMX-FP16 (``is_fp16_supported()`` is
``torch.ops.mkldnn._is_mkldnn_fp16_supported()``, False on this AMD EPYC; deepspeed/runtime/engine.py
``_do_sanity_check``: "Type fp16 is not supported on your device"), so ZeRO-2 in fp16 is in the GPU script. The
first run builds DeepSpeed's CPU communication op (about 2-3 minutes on 2 cores; cached under
~/.cache/torch_extensions), which is why this is not part of the test suite.
"""

from __future__ import annotations

import copy
import os
import socket
import sys

import torch
import transformers

from mmr_transformers import find_classifier, multi_margin_penalty, select_rows

ALPHA, LR, ROWS, CLASSES = 0.5, 0.1, 8, 3
TOLERANCE = 1e-6
CONFIGS = {"zero3": (3, torch.float32), "zero2": (2, torch.float32), "zero3-bf16": (3, torch.bfloat16),
           "zero2-bf16": (2, torch.bfloat16)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_bert() -> torch.nn.Module:
    """A randomly initialised 2-layer BERT classifier, dropout off, weights large enough to give distinct margins."""
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=CLASSES,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def forward_with_penalty(model, batch):
    """The model's loss, MMR's penalty from the weight and features captured inside the forward, and the capture."""
    head = find_classifier(model)
    with head.capture() as captured:
        outputs = model(**batch)
    penalty = multi_margin_penalty(captured.features_for(outputs.logits), outputs.logits, batch["labels"],
                                   captured.weight)
    return outputs.loss, penalty, captured


def sgd_step(model, batch, alpha):
    """The weights after one SGD step on ``loss + alpha·R``, updating fp32 copies of ``model``'s weights (DeepSpeed's
    master weights in bf16), cast back to the model's dtype."""
    loss, penalty, _ = forward_with_penalty(model, batch)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss + alpha * penalty, params)
    return {n: (p.detach().float() - LR * g.float()).to(p.dtype) for n, p, g in zip(names, params, grads)}


def check_config(name: str, stage: int, dtype: torch.dtype, batch: dict, check) -> None:
    import deepspeed

    model = tiny_bert()
    reference = copy.deepcopy(model).to(dtype)  # unsharded, in the engine's dtype, stepped by plain torch
    config = {"train_micro_batch_size_per_gpu": ROWS, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              # ZeRO-3 persistence threshold 0: no parameter stays gathered between forwards, the small head included
              "zero_optimization": {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})},
              "bf16": {"enabled": dtype == torch.bfloat16}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)
    head = find_classifier(engine.module)
    full_shape = tuple(reference.classifier.weight.shape)
    stored = head.linear.weight
    if stage == 3:
        check(name, "partitioned", tuple(stored.shape) == (0,) and tuple(stored.ds_shape) == full_shape,
              f"the classifier parameter holds shape {tuple(stored.shape)} between forwards, ds_shape {tuple(stored.ds_shape)}")
    else:
        check(name, "whole", tuple(stored.shape) == full_shape and not hasattr(stored, "ds_shape"),
              f"the classifier parameter holds shape {tuple(stored.shape)} (ZeRO-2 partitions gradients and optimizer "
              "states, not parameters)")
    check(name, "stage and dtype", engine.zero_optimization_stage() == stage and stored.dtype == dtype,
          f"ZeRO stage {engine.zero_optimization_stage()}, the engine holds the classifier in {stored.dtype}")

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    scored, ref_scored = (select_rows(m, find_classifier(m), inputs, ROWS // 2, "mms") for m in (engine, reference))
    check(name, "scoring", torch.equal(scored.keep, ref_scored.keep) and torch.equal(scored.margins, ref_scored.margins),
          f"select_rows through the engine (no gradients, eval mode) keeps rows {scored.keep.tolist()}, the unsharded "
          f"model {ref_scored.keep.tolist()}; margins equal: {torch.equal(scored.margins, ref_scored.margins)}")

    engine.train()
    expected = sgd_step(reference, batch, ALPHA)
    exact = sgd_step(copy.deepcopy(reference).float(), batch, ALPHA)  # fp32 arithmetic from the same weights
    without_penalty = sgd_step(reference, batch, 0.0)  # the same step without R: shows R's gradient really arrived
    loss, penalty, captured = forward_with_penalty(engine, batch)
    ref_loss, ref_penalty, ref_captured = forward_with_penalty(reference, batch)
    same_weight = torch.equal(captured.weight.detach(), reference.classifier.weight.detach())
    check(name, "captured weight", tuple(captured.weight.shape) == full_shape and same_weight,
          f"capture() saw shape {tuple(captured.weight.shape)} {captured.weight.dtype} inside the forward, equal to the "
          f"unsharded weight: {same_weight}; the parameter after the forward: shape {tuple(head.linear.weight.shape)}")
    check(name, "captured features", torch.equal(captured.inputs.detach(), ref_captured.inputs.detach()),
          f"phi ({captured.inputs.dtype}) equal to the unsharded model's")
    diff = abs(penalty.item() - ref_penalty.item()) / ref_penalty.item()
    check(name, "penalty", diff <= TOLERANCE and penalty.dtype == torch.float32,
          f"R = {penalty.item():.8g} ({penalty.dtype}) sharded, {ref_penalty.item():.8g} unsharded "
          f"(relative diff {diff:.2e} <= {TOLERANCE:g})")

    engine.backward(loss + ALPHA * penalty)
    engine.step()
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):  # a no-op under ZeRO-2
        stepped = {n: p.detach().clone() for (n, _), p in zip(reference.named_parameters(), params)}
    head_diff = (stepped["classifier.weight"].float() - expected["classifier.weight"].float()).abs()
    r_effect = (without_penalty["classifier.weight"].float() - expected["classifier.weight"].float()).abs().max().item()
    if dtype == torch.float32:
        worst = max((stepped[n] - w).abs().max().item() for n, w in expected.items())
        passed, bound = worst <= TOLERANCE and head_diff.max() <= TOLERANCE, TOLERANCE
        others = f"all {len(expected)} parameters {worst:.2e} (<= {TOLERANCE:g})"
    else:  # bf16 gradients differ from the unsharded ones by bf16 rounding where ZeRO-3 computes them in another order
        bound = (expected["classifier.weight"].float().abs() * 2 ** -7).max().item()  # one bf16 step of the weight
        ratio = {n: (stepped[n].float() - exact[n].to(dtype).float()).abs().max().item()
                 / max((expected[n].float() - exact[n].to(dtype).float()).abs().max().item(), TOLERANCE) for n in expected}
        worst = max(ratio, key=ratio.get)
        passed = ratio[worst] <= 2 and bool((head_diff <= expected["classifier.weight"].float().abs() * 2 ** -7).all())
        others = (f"every parameter as close to the exact fp32 step as the unsharded bf16 step, within 2x (worst "
                  f"{worst} {ratio[worst]:.2f}x); classifier within one bf16 step")
    check(name, "step", passed and r_effect > 100 * bound,
          f"after engine.backward(loss + {ALPHA}·R) and engine.step() (SGD lr {LR}), gathered weights vs one unsharded "
          f"torch step: classifier max |diff| {head_diff.max().item():.2e}, {others}; R's share of the classifier's "
          f"step {r_effect:.2e}")
    if stage == 3:
        check(name, "partitioned after the step", tuple(head.linear.weight.shape) == (0,),
              f"the classifier parameter's shape after the step: {tuple(head.linear.weight.shape)}")
    engine.destroy()


def main() -> int:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(3, 64, (ROWS, 8), generator=g), "attention_mask": torch.ones(ROWS, 8, dtype=torch.long),
             "labels": torch.randint(0, CLASSES, (ROWS,), generator=g)}
    results = []

    def check(config, name, passed, detail):
        results.append(passed)
        print(f"{'ok    ' if passed else 'FAILED'} {config} {name}: {detail}", flush=True)

    for name, (stage, dtype) in CONFIGS.items():
        try:
            check_config(name, stage, dtype, batch, check)
        except Exception as error:  # report it and go on with the next configuration
            check(name, "run", False, f"{type(error).__name__}: {error}")
    print(f"deepspeed {deepspeed.__version__}, torch {torch.__version__}, transformers {transformers.__version__}: "
          f"{sum(results)}/{len(results)} checks ok", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

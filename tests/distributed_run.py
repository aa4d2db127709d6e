"""Train a tiny BERT with MMR + MMS selection; run by test_distributed.py under `accelerate launch`, and called in
the test process (``main(argv)``) for the single-process reference runs.

``--num_samples`` sets the training set's size (50 with 2 processes × 8 candidates: an uneven last round);
``--mean_loss_func`` trains with a ``compute_loss_func`` (the step's mean cross-entropy, over ``num_items_in_batch``);
``--fsdp_on_cpu`` lets Accelerate's FSDP run on CPU processes (see ``allow_fsdp_on_cpu``); ``--check_stream_refusal``
and ``--check_int8_refusal`` first check that a several-process run over an IterableDataset, and the int8 scorer of
a sharded model, are refused.

Each process writes ``selections-rank{R}.json`` (fresh selection: the rows it selected, step by step) and
``trained-rank{R}.json`` (the rows of every trained micro-batch; the cached scores; the parameter elements the process
holds after training, all of them unsharded and about half under FSDP with two processes; FSDP1's sharding strategy
and ``use_orig_params`` as torch applied them; the dtypes of the model's logits; the dtypes of the penalty's weight,
features and result); the main process
saves the final model and the log history.
"""

import copy
import json
import os
import sys
from dataclasses import dataclass
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))

from safetensors.torch import save_file  # noqa: E402
from torch.nn.functional import cross_entropy  # noqa: E402
from torch.utils.data import IterableDataset  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from builders import RecordingTrainer, tiny_model, token_dataset  # noqa: E402
from mmr_transformers import MMRTrainer, MMRTrainingArguments  # noqa: E402
from mmr_transformers import trainer as trainer_module  # noqa: E402


@dataclass
class RunOptions:
    num_samples: int = 64
    fsdp_on_cpu: bool = False
    check_stream_refusal: bool = False
    check_int8_refusal: bool = False
    mean_loss_func: bool = False


def mean_cross_entropy(outputs, labels, num_items_in_batch=None):
    """A ``compute_loss_func``: the micro-batch's share of the step's mean cross-entropy over its labelled rows."""
    return cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch


def allow_fsdp_on_cpu():
    """The smallest patch of Accelerate's state that lets FSDP run on CPU processes (gloo): Accelerate turns FSDP
    on only for accelerator setups (its list of distributed types lacks MULTI_CPU) and otherwise silently runs
    DDP. torch's FSDP1 and FSDP2 themselves run on gloo; this makes AcceleratorState keep the FSDP plugin it was
    given, and records the FSDP type in PartialState as Accelerate's own FSDP branch does (else the next
    ``AcceleratorState()`` copies MULTI_CPU back). For FSDP1 the device is ``cpu`` rather than MULTI_CPU's
    ``cpu:0``: FSDP1 checks ``device_id`` against ``torch.device(torch.cpu.current_device())``, which is ``cpu``
    (torch/distributed/fsdp/_init_utils.py, ``_get_compute_device``), and refuses ``cpu:0``. FSDP1 also needs
    ``sync_module_states: false`` in its config, which Accelerate refuses on CPU (a documented option)."""
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            if self._mixed_precision != "no":  # what Accelerate's own FSDP branch does
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            if fsdp_plugin.fsdp_version == 1:
                self.device = torch.device("cpu")
            PartialState._shared_state.update(distributed_type=self.distributed_type, device=self.device)

    AcceleratorState.__init__ = init


class Stream(IterableDataset):
    def __iter__(self):
        yield from token_dataset(8)


def full_state_dict(trainer):
    """The model's weights, gathered whole from FSDP's shards (a collective: every process calls it). FSDP1 gathers
    them in ``state_dict()`` (the Trainer's FULL_STATE_DICT type); FSDP2 returns DTensors, gathered here."""
    from torch.distributed.tensor import DTensor

    return {name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().clone().contiguous()
            for name, value in trainer.model.state_dict().items()}


def parameters_held(model) -> int:
    """Parameter elements this process holds: its shards under FSDP (FSDP1's flat parameters or the views into them,
    FSDP2's local DTensor shards), every element otherwise."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


def fsdp1_wrapping(model) -> str | None:
    """FSDP1's sharding strategy and ``use_orig_params`` as the wrapped model applies them (None: not FSDP1)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(model, FullyShardedDataParallel):
        return None
    return f"{model.sharding_strategy.name} use_orig_params={model._use_orig_params}"


def main(argv=None):
    args, options = HfArgumentParser((MMRTrainingArguments, RunOptions)).parse_args_into_dataclasses(args=argv)
    if options.fsdp_on_cpu:
        allow_fsdp_on_cpu()
    model = tiny_model("bert", dropout=False, initializer_range=1.0)
    os.makedirs(args.output_dir, exist_ok=True)
    if options.check_stream_refusal:
        try:
            stream_args = copy.copy(args)
            stream_args.max_steps = 4  # a stream needs a step count; the refusal comes from the process count
            MMRTrainer(model=model, args=stream_args, train_dataset=Stream())
            refused = ""
        except ValueError as error:
            refused = str(error)
        with open(os.path.join(args.output_dir, f"stream-refusal-rank{args.process_index}.txt"), "w") as f:
            f.write(refused)
    if options.check_int8_refusal:
        try:
            int8_args = copy.copy(args)
            int8_args.selection_scorer = "int8"
            MMRTrainer(model=model, args=int8_args, train_dataset=token_dataset(8))
            refused = ""
        except ValueError as error:
            refused = str(error)
        with open(os.path.join(args.output_dir, f"int8-refusal-rank{args.process_index}.txt"), "w") as f:
            f.write(refused)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=token_dataset(options.num_samples),
                               compute_loss_func=mean_cross_entropy if options.mean_loss_func else None)
    logits_dtypes, penalty_dtypes = set(), set()
    model.register_forward_hook(lambda module, inputs, output: logits_dtypes.add(str(output.logits.dtype)))
    penalty = trainer_module.multi_margin_penalty

    def recorded_penalty(features, logits, labels, weight):
        result = penalty(features, logits, labels, weight)
        penalty_dtypes.add(f"weight {weight.dtype}, features {features.dtype} -> {result.dtype}")
        return result

    with mock.patch.object(trainer_module, "multi_margin_penalty", recorded_penalty):
        trainer.train()
    weights = full_state_dict(trainer) if trainer.is_fsdp_enabled else None
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"selections-rank{args.process_index}.json"), "w") as f:
        json.dump([{"step": r["step"], "selected": r["selected"]} for r in trainer.selections], f)
    with open(os.path.join(args.output_dir, f"trained-rank{args.process_index}.json"), "w") as f:
        cache = trainer._sampler.scores.tolist() if trainer._sampler is not None else None
        json.dump({"trained": trainer.trained, "cached_scores": cache, "parameters_held": parameters_held(trainer.model),
                   "fsdp1": fsdp1_wrapping(trainer.model), "logits_dtypes": sorted(logits_dtypes),
                   "penalty_dtypes": sorted(penalty_dtypes)}, f)
    if trainer.is_world_process_zero():
        if weights is None:
            trainer.save_model(os.path.join(args.output_dir, "final"))
        else:
            os.makedirs(os.path.join(args.output_dir, "final"), exist_ok=True)
            save_file(weights, os.path.join(args.output_dir, "final", "model.safetensors"))
        with open(os.path.join(args.output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
    # leave the process group before exiting: without it, gloo's threads sometimes abort the exit
    # ("terminate called without an active exception"), failing a run whose work was all done
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()

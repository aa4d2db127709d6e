"""What the example scripts share: layered settings and the train → evaluate → save-metrics stage."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import numpy as np
from transformers import HfArgumentParser, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint


def accuracy(eval_prediction) -> dict[str, float]:
    """``compute_metrics`` for a classifier: the share of rows whose largest logit is the label's.

    >>> from transformers import EvalPrediction
    >>> accuracy(EvalPrediction(predictions=np.array([[0.1, 2.0], [3.0, -1.0]]), label_ids=np.array([1, 1])))
    {'accuracy': 0.5}
    """
    predictions = np.argmax(eval_prediction.predictions, axis=1)
    return {"accuracy": float(np.mean(predictions == eval_prediction.label_ids))}


def check_sample_caps(args: Any) -> None:
    """A script's --max_train_samples/--max_eval_samples below 1 would train or evaluate on nothing (or, as a
    negative slice, on all rows but a few)."""
    for flag, value, what in [("--max_train_samples", args.max_train_samples, "train on"),
                              ("--max_eval_samples", args.max_eval_samples, "evaluate on")]:
        if value is not None and value < 1:
            raise SystemExit(f"{flag} {value}: there would be no rows to {what}. Give at least 1, or leave the flag "
                             f"out to use the whole split.")


def parse_layered(parser: HfArgumentParser, layers: list[tuple[str, dict[str, Any]]], argv: list[str]):
    """Parse ``argv`` with each ``(source, settings)`` layer, in order, as defaults under the command line:
    defaults < layer 1 < layer 2 < ... < command line. Unknown keys and unknown command-line arguments fail
    naming their source."""
    valid = {action.dest for action in parser._actions}
    for source, settings in layers:
        unknown = sorted(set(settings) - valid)
        if unknown:
            raise SystemExit(f"{source}: unknown settings {unknown}; every key must be a command-line flag name.")
        parser.set_defaults(**settings)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise SystemExit(f"unknown command-line arguments {remaining}: not flags of this script (run it with --help "
                         f"for the list of flags).")
    return tuple(parsed)


SCRIPT_SETTINGS = "script_settings.json"  # in each checkpoint: what the script trained with
# what the rest of a training run does not depend on (evaluation, where files come from, the settings file whose
# values are compared one by one)
UNCHECKED_ON_RESUME = ("cache_dir", "max_eval_samples", "validation_file", "download", "config_file")


def as_plain(run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` with its dataclasses (the scripts' argument groups) as dicts, as ``run_config.json`` holds it."""
    return {key: asdict(value) if hasattr(value, "__dataclass_fields__") else value for key, value in run_config.items()}


def flat_settings(run_config: dict[str, Any], args) -> dict[str, Any]:
    """The script's settings (``run_config``'s dataclasses field by field) and the seeds, as ``{"data.x": value}``;
    a path that exists is compared as its real path (``./x`` and ``x`` are one file)."""
    flat = {"seed": args.seed, "data_seed": args.data_seed}
    for key, value in as_plain(run_config).items():
        fields = value if isinstance(value, dict) else {"": value}
        flat |= {f"{key}.{name}".rstrip("."): os.path.realpath(v) if isinstance(v, str) and os.path.exists(v) else v
                 for name, v in fields.items() if name not in UNCHECKED_ON_RESUME}
    return json.loads(json.dumps(flat))  # as a checkpoint's file reads back (tuples as lists)


class SaveScriptSettings(TrainerCallback):
    """Writes :func:`flat_settings` into every checkpoint, so that a resume can be checked against them."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):  # where the checkpoint was written (each node's, if so set)
            with open(os.path.join(folder, SCRIPT_SETTINGS), "w") as f:
                json.dump(self.settings, f, indent=1)


def check_resume(checkpoint: str, settings: dict[str, Any]) -> None:
    """A resumed run must train as the interrupted one did: on the same data, subsets, lengths and seeds (the
    trainer checks its own selection settings)."""
    path = os.path.join(checkpoint, SCRIPT_SETTINGS)
    if not os.path.isfile(path):
        return  # not written by these scripts
    with open(path) as f:
        saved = json.load(f)
    changed = [key for key in sorted(set(saved) | set(settings)) if saved.get(key) != settings.get(key)]
    if changed:
        raise SystemExit(f"resuming from {checkpoint} with other settings than the run it was saved by: "
                         + ", ".join(f"{key} {saved.get(key)!r} -> {settings.get(key)!r}" for key in changed)
                         + ". The rest of the run would train on other data or in another order than the interrupted "
                         "one. Resume with the saved values, or start a new run (another --output_dir).")


def train_and_evaluate(trainer, eval_datasets: dict[str, Any], run_config: dict[str, Any]) -> dict[str, float]:
    """Train (resuming when asked, after :func:`check_resume`), save the model and state, evaluate each
    ``{prefix: dataset}`` and write ``train_results.json``, ``<prefix>_results.json``, ``all_results.json`` and
    ``run_config.json``; then leave the process group, as the run is over. Every checkpoint holds the script's
    settings (:class:`SaveScriptSettings`)."""
    args = trainer.args
    settings = flat_settings(run_config, args)
    resume = args.resume_from_checkpoint
    # (a settings layer can give True: the output folder's last checkpoint, as Trainer takes it)
    checkpoint = get_last_checkpoint(args.output_dir) if resume is True else resume
    if checkpoint:
        check_resume(checkpoint, settings)
    trainer.add_callback(SaveScriptSettings(settings))
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    results = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}
    trainer.log_metrics("train", results)
    trainer.save_metrics("train", results, combined=False)
    trainer.save_state()
    for prefix, dataset in eval_datasets.items():
        metrics = {**trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix), f"{prefix}_samples": len(dataset)}
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics, combined=False)
        results.update(metrics)
    trainer.save_metrics("all", results, combined=False)  # this run's alone: not merged into an older run's file
    if trainer.is_world_process_zero():
        with open(os.path.join(args.output_dir, "run_config.json"), "w") as f:
            json.dump({**as_plain(run_config), "training": args.to_dict()}, f, indent=2)
    # leave the process group, as Accelerate asks of every script: without it, gloo aborted the exit of some
    # two-process test runs ("terminate called without an active exception") after all the work was written
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return results

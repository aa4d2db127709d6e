"""``MarginDiagnosticsCallback``: :func:`~mmr_transformers.diagnostics.margin_diagnostics` of the evaluation set at
each evaluation during training, logged and kept in ``output_dir/margin_diagnostics.json``."""

from __future__ import annotations

import json
import os
import random
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from .diagnostics import check_diagnostics_options, margin_diagnostics
from .heads import check_classification_head, find_classifier

SCALARS = ("margin_mean", "feature_norm_mean", "feature_norm_max", "feature_norm_sq_max", "weight_gap_sq_mean",
           "accuracy")


def logged_scalars(diagnostics: dict[str, Any]) -> dict[str, float]:
    """The scalar summaries of a diagnostics record, named ``margins/<field>``, ``margins/q<percent>`` (quantiles)
    and ``margins/within_<epsilon>``."""
    logs = {f"margins/{name}": diagnostics[name] for name in SCALARS if name in diagnostics}
    logs |= {f"margins/{name}": value for name, value in diagnostics["margin_quantiles"].items()}
    return logs | {f"margins/within_{epsilon}": share for epsilon, share in diagnostics["within_epsilon"].items()}


@contextmanager
def _rng_states_kept():
    """Python's, NumPy's and torch's (CPU, CUDA) random states restored after the block: iterating a DataLoader draws
    its base seed from torch's CPU generator, which would change the dropout of every later training step."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class MarginDiagnosticsCallback(TrainerCallback):
    """At each evaluation during training, the margin diagnostics of the evaluation set (all processes' samples,
    gathered as the evaluation gathers them): its scalars (:func:`logged_scalars`) through ``trainer.log``, so every
    ``report_to`` integration sees them, and the full record with ``step`` and ``epoch`` appended to
    ``output_dir/margin_diagnostics.json`` (written by the main process; a resumed run keeps the records up to its
    checkpoint). Training is unchanged: no gradients, eval mode, random states restored.

    ``eval_dataset`` names the set when ``trainer.eval_dataset`` is a dict; ``classifier_module`` defaults to the
    trainer's (``MMRTrainingArguments``) or discovery; ``options`` are :func:`margin_diagnostics`' (``epsilons``,
    ``quantiles``, ``lowest_share``, ``return_margins``)::

        trainer.add_callback(MarginDiagnosticsCallback(trainer))
    """

    FILE_NAME = "margin_diagnostics.json"

    def __init__(self, trainer: Trainer, eval_dataset: str | None = None, classifier_module: str | None = None,
                 **options: Any):
        # kept as tuples: a generator, once checked, would be empty at the first evaluation
        options |= {name: tuple(options[name]) for name in ("epsilons", "quantiles") if name in options}
        check_diagnostics_options(**options)
        if trainer.eval_dataset is None:
            raise ValueError("MarginDiagnosticsCallback diagnoses the evaluation set: give the trainer one.")
        if isinstance(trainer.eval_dataset, dict) and eval_dataset not in trainer.eval_dataset:
            raise ValueError(f"the trainer has several evaluation sets {sorted(trainer.eval_dataset)}: pass "
                             f"eval_dataset=<one of them> (got {eval_dataset!r}).")
        if not isinstance(trainer.eval_dataset, dict) and eval_dataset is not None:
            raise ValueError(f"eval_dataset={eval_dataset!r} names one of several evaluation sets, but the trainer has "
                             "one (not a dict): leave eval_dataset out.")
        self.trainer, self.eval_dataset, self.options = trainer, eval_dataset, options
        self.classifier_module = classifier_module or getattr(trainer.args, "classifier_module", None)
        check_classification_head(trainer.model, find_classifier(trainer.model, self.classifier_module),
                                  "MarginDiagnosticsCallback")
        self.records: list[dict[str, Any]] = []
        self._training = False

    def path(self, output_dir: str) -> str:
        return os.path.join(output_dir, self.FILE_NAME)

    def on_train_begin(self, args, state, control, **kwargs):
        self._training, self.records = True, []
        if state.global_step and os.path.isfile(self.path(args.output_dir)):  # resumed: keep what came before
            with open(self.path(args.output_dir)) as f:
                self.records = [r for r in json.load(f) if r["step"] <= state.global_step]

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_evaluate(self, args, state, control, **kwargs):
        """Once per evaluation during training (a dict of evaluation sets calls this once per set)."""
        if not self._training or (self.records and self.records[-1]["step"] == state.global_step):
            return
        trainer = self.trainer
        head = find_classifier(trainer.model, self.classifier_module)
        with _rng_states_kept(), trainer.compute_loss_context_manager():
            diagnostics = margin_diagnostics(trainer.model, trainer.get_eval_dataloader(self.eval_dataset), head,
                                             gather=trainer.accelerator.gather_for_metrics, **self.options)
        self.records.append({"step": state.global_step, "epoch": state.epoch, **diagnostics})
        trainer.log(logged_scalars(diagnostics))
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            path = self.path(args.output_dir)
            with open(path + ".tmp", "w") as f:
                json.dump(self.records, f, indent=1)
            os.replace(path + ".tmp", path)

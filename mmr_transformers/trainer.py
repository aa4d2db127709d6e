"""``MMRTrainer``: a ``transformers.Trainer`` with Multi-Margin Regularization and margin-based selection.

Swap ``Trainer`` for ``MMRTrainer`` and the training loss gains the MMR term (alpha defaults to the
thesis' 1e-5); use :class:`MMRTrainingArguments` to set alpha, its schedule and the selection strategy.

Logged metrics (through ``Trainer.log``, so every ``report_to`` logger sees them), each over the window
since the previous training log and averaged (counts: summed) over processes:

- ``mmr_penalty``: the regularizer R (before alpha); ``mmr_alpha``: alpha at the latest step.
- ``mms_candidates`` / ``mms_selected``: mean minimal margin score of the scored candidates and of the
  samples trained on.
- ``samples_scored`` / ``samples_trained``: samples forwarded for scoring / trained on.
- ``scoring_time_fraction``: share of the window's wall time spent scoring candidates.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from .heads import ClassifierHead, check_classification_head, find_classifier
from .margins import minimal_margin_scores, multi_margin_penalty
from .schedules import alpha_at
from .selection import (
    batch_size_of,
    get_selection_strategy,
    length_sorted_chunks,
    num_to_keep,
    select_candidates,
    take_rows,
    trim_padding,
)
from .training_args import mmr_setting, validate_mmr_settings


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output (``ModelOutput``, dict, tuple, or a bare tensor)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        return outputs["logits"]
    return outputs[0]


def selection_seed(seed: int, step: int, process_index: int, micro_step: int) -> int:
    """A seed for random selection that depends only on where training is, so resume reproduces it."""
    return int(np.random.SeedSequence([seed, step, process_index, micro_step]).generate_state(1)[0])


class MMRTrainer(Trainer):
    """``Trainer`` whose training loss is ``CE + alpha(step)·R`` and whose steps train on selected candidates.

    - ``compute_loss`` adds ``alpha·R`` (:func:`~mmr_transformers.margins.multi_margin_penalty`) while
      training only; evaluation loss stays the model's plain loss.
    - With ``selection != "none"`` the train DataLoader yields candidate micro-batches of ``ceil(k·b)``
      samples; each is scored without gradients (eval mode, so dropout is off and BatchNorm statistics
      stay untouched) and cut to the ``b`` samples the strategy prefers before the usual
      forward/backward (sequence columns that are padding in every kept row are dropped). An epoch
      therefore scores every sample once and trains on about ``1/k`` of them.
    - Sequence-classification models declare ``forward(**kwargs)`` but return a per-batch mean loss, so
      the stock ``Trainer`` would skip dividing it by the gradient-accumulation steps (and multiply it by
      the process count). ``MMRTrainer`` treats the loss as the per-batch mean it is.
    """

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *pargs, **kwargs):
        # plain TrainingArguments (or None) get MMRTrainingArguments' defaults for the MMR fields
        validate_mmr_settings(args)
        self._mmr_alpha = mmr_setting(args, "mmr_alpha")
        self._mmr_alpha_end = mmr_setting(args, "mmr_alpha_end")
        self._mmr_alpha_schedule = mmr_setting(args, "mmr_alpha_schedule")
        self._mmr_enabled = max(self._mmr_alpha, self._mmr_alpha_end or 0.0) > 0
        selection = mmr_setting(args, "selection")
        self._strategy = None if selection == "none" else get_selection_strategy(selection)
        self._selection_ratio = mmr_setting(args, "selection_ratio")
        self._scoring_batch_size = mmr_setting(args, "selection_scoring_batch_size")
        self._classifier_module = mmr_setting(args, "classifier_module")
        self._head: ClassifierHead | None = None
        self._head_owner: nn.Module | None = None
        if model is not None:
            self._classifier_head(model)  # bad heads fail before any work is done
        self._window_means: dict[str, list[float]] = defaultdict(list)
        self._window_sums: dict[str, float] = defaultdict(float)
        self._window_started: float | None = None
        super().__init__(model, args, *pargs, **kwargs)
        # The model's loss is a per-batch mean, whatever its forward signature says (SPEC §4).
        self.model_accepts_loss_kwargs = False

    # ---- the classifier -------------------------------------------------------------------------

    @property
    def _uses_margins(self) -> bool:
        return self._mmr_enabled or self._strategy is not None

    def _classifier_head(self, model: nn.Module | None = None) -> ClassifierHead | None:
        """The last linear layer of the current model, found once per model object."""
        model = self.model if model is None else model
        if not self._uses_margins:
            return None
        if self._head is None or self._head_owner is not model:
            head = find_classifier(model, self._classifier_module)
            method = "MMR (mmr_alpha > 0)" if self._mmr_enabled else f"selection={self._strategy.name!r}"
            check_classification_head(model, head, method)
            self._head, self._head_owner = head, model
        return self._head

    # ---- Multi-Margin Regularization ------------------------------------------------------------

    def current_mmr_alpha(self) -> float:
        """alpha at the optimizer step being computed."""
        return alpha_at(
            self._mmr_alpha_schedule, self.state.global_step, self.state.max_steps, self._mmr_alpha, self._mmr_alpha_end
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The parent's loss, plus ``alpha·R`` when training with MMR on."""
        if not (self._mmr_enabled and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                "MMR (mmr_alpha > 0) needs the labels of each training sample to find its most competitive wrong "
                f"class, but the batch has only {sorted(inputs)}. Add a 'labels' column to the training data, "
                "or set mmr_alpha=0."
            )
        head = self._classifier_head()
        with head.capture() as captured:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        logits = logits_of(outputs)
        penalty = multi_margin_penalty(captured.features_for(logits), logits, labels, head.weight)
        alpha = self.current_mmr_alpha()
        self._window_means["mmr_penalty"].append(penalty.item())
        self._window_means["mmr_alpha"] = [alpha]
        if self.compute_loss_func is not None:  # its loss is already scaled for accumulation; R is a batch mean
            penalty = penalty / self.current_gradient_accumulation_steps
        loss = loss + alpha * penalty
        return (loss, outputs) if return_outputs else loss

    # ---- Selective sampling ---------------------------------------------------------------------

    def candidate_batch_size(self) -> int:
        """Samples per candidate micro-batch: ``ceil(k·b)``."""
        return math.ceil(self._selection_ratio * self._train_batch_size)

    def get_train_dataloader(self):
        """The real (Accelerate-prepared) DataLoader, with candidate batches of ``ceil(k·b)`` when selecting."""
        if self._strategy is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.candidate_batch_size(),
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the candidate micro-batches of one optimizer step and cut each to its selected rows."""
        if self._window_started is None:
            self._window_started = time.perf_counter()
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._strategy is None:
            return batch_samples, num_items_in_batch
        selected = [self._select(batch, micro_step) for micro_step, batch in enumerate(batch_samples)]
        return selected, self._get_num_items_in_batch(selected, device)

    def _select(self, candidates: dict[str, Any], micro_step: int) -> dict[str, Any]:
        """Score one candidate micro-batch without gradients and keep the strategy's ``b`` rows."""
        started = time.perf_counter()
        head = self._classifier_head()
        n = batch_size_of(candidates)
        num_keep = num_to_keep(n, self._selection_ratio, self._train_batch_size)
        generator = torch.Generator().manual_seed(
            selection_seed(self.args.seed, self.state.global_step, self.args.process_index, micro_step)
        )
        scorer = self.model_wrapped if (self.is_fsdp_enabled or self.is_deepspeed_enabled) else self.model
        was_training = scorer.training
        scorer.eval()
        try:
            with torch.inference_mode(), self.compute_loss_context_manager():
                inputs = self._prepare_inputs(candidates)
                labels = inputs.get("labels")
                logits = self._candidate_logits(scorer, inputs, n)
                margins = minimal_margin_scores(logits, head.weight)
                keep = select_candidates(self._strategy, logits, head.weight, num_keep, labels, generator)
                selected_margin = margins[keep].mean().item()
                candidate_margin = margins.mean().item()
        finally:
            scorer.train(was_training)
        keep = keep.cpu().clone()  # a normal tensor, usable outside inference mode
        self._window_means["mms_candidates"].append(candidate_margin)
        self._window_means["mms_selected"].append(selected_margin)
        self._window_sums["samples_scored"] += n
        self._window_sums["samples_trained"] += len(keep)
        self._window_sums["scoring_seconds"] += time.perf_counter() - started
        return trim_padding(take_rows(candidates, keep))

    def _candidate_logits(self, scorer: nn.Module, inputs: dict[str, Any], n: int) -> torch.Tensor:
        """Logits of all candidates, computed in length-sorted chunks of ``selection_scoring_batch_size`` rows."""
        features = {k: v for k, v in inputs.items() if k not in self.label_names}
        logits = None
        for index, chunk in length_sorted_chunks(features, self._scoring_batch_size or self._train_batch_size):
            chunk_logits = logits_of(scorer(**chunk))
            if logits is None:
                logits = chunk_logits.new_empty((n, chunk_logits.shape[1]))
            logits[index.to(logits.device)] = chunk_logits
        return logits

    # ---- Logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the MMR/selection metrics of the window to each training log (one collective per log)."""
        if "loss" in logs and self._uses_margins:
            logs.update(self._window_metrics())
        super().log(logs, start_time)
        self._window_started = time.perf_counter()

    def _window_metrics(self) -> dict[str, float]:
        window_seconds = time.perf_counter() - (self._window_started or time.perf_counter())
        means = {name: sum(values) / len(values) for name, values in self._window_means.items() if values}
        if self._strategy is not None:
            means["scoring_time_fraction"] = self._window_sums.pop("scoring_seconds", 0.0) / max(window_seconds, 1e-9)
        sums = dict(self._window_sums)
        self._window_means.clear()
        self._window_sums.clear()
        names = sorted(means) + sorted(sums)
        values = {**means, **sums}
        local = torch.tensor([[values[name] for name in names]], dtype=torch.float64, device=self.args.device)
        gathered = self.accelerator.gather(local)
        reduced = torch.cat([gathered[:, : len(means)].mean(dim=0), gathered[:, len(means):].sum(dim=0)])
        return dict(zip(names, reduced.tolist()))

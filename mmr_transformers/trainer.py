"""``MMRTrainer``: a ``transformers.Trainer`` with Multi-Margin Regularization and margin-based selection.

Swap ``Trainer`` for ``MMRTrainer`` and the training loss gains the MMR term (alpha defaults to the
thesis' 1e-5); use :class:`MMRTrainingArguments` to set alpha, its schedule and the selection strategy.

Logged metrics (through ``Trainer.log``, so every ``report_to`` logger sees them), each over the window
since the previous training log and averaged (counts: summed) over processes. All share the prefix ``mmr/``:

- ``mmr/penalty``: the regularizer R (before alpha); ``mmr/alpha``: alpha at the latest step.
- ``mmr/mms_candidates`` / ``mmr/mms_selected``: mean minimal margin score of the scored candidates and of
  the samples trained on.
- ``mmr/samples_scored`` / ``mmr/samples_trained``: samples forwarded for scoring / trained on.
- ``mmr/scoring_time_fraction``: share of the window's wall time spent scoring candidates.
- ``mmr/rank_agreement``: Spearman agreement of cheap and full-model scores (``selection_agreement_steps``).
- ``mmr/scorer_refreshes``: builds and refreshes of the int8 scoring copy; ``mmr/cache_coverage``: share of
  samples with a cached score.
- ``mmr/pruned_share``: with pruning, the share of the training samples the latest pass left out.
"""

from __future__ import annotations

import glob
import json
import math
import os
import pickle
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .batching import as_written, batch_size_of, logits_of, take_rows, trim_padding
from .diagnostics_callback import MarginDiagnosticsCallback
from .heads import ClassifierHead, check_classification_head, find_classifier
from .margins import IGNORE_INDEX, check_class_labels, multi_margin_penalty
from .pruning import PruningBatchSampler, learned_score, weighted_cross_entropy
from .sampler import CachedScoreBatchSampler, IndexedCollator, IndexedDataset, ScoreCache
from .schedules import alpha_at
from .scoring import Int8Scorer, rank_agreement, shorten_for_scoring
from .selection import get_selection_strategy, num_to_keep, select_rows, selection_priority
from .settings import MMRSettings


def selection_seed(seed: int, step: int, process_index: int, micro_step: int) -> int:
    """A seed for random selection that depends only on where training is, so resume reproduces it."""
    return int(np.random.SeedSequence([seed, step, process_index, micro_step]).generate_state(1)[0])


class LogWindow:
    """The MMR/selection metrics between two training logs, reduced over processes in one collective.

    Every process declares the same metrics up front (``name -> "mean" | "total" | "latest"``), so the
    collective has one shape everywhere even when a process recorded nothing (e.g. a placeholder step).
    ``mean``: the mean of all values recorded on all processes, a value recorded as the mean of ``count`` values
    weighing ``count``; ``total``: the sum; ``latest``: the mean over processes of each one's latest value. A mean
    or latest value nobody recorded is left out of the log.
    """

    def __init__(self, metrics: dict[str, str]):
        self.metrics = metrics
        self.values: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.scoring_seconds = 0.0
        self.started: float | None = None

    def start(self) -> None:
        """Start the window's clock, unless it runs already."""
        if self.started is None:
            self.started = time.perf_counter()

    def record(self, name: str, value: float, count: int = 1) -> None:
        """``value``: one value, or the mean of ``count`` values (e.g. over a micro-batch's samples)."""
        if name not in self.metrics:
            raise KeyError(f"{name!r} is not a declared metric of this run: {sorted(self.metrics)}")
        self.values[name].append((float(value), count))

    def add_scoring_time(self, seconds: float) -> None:
        self.scoring_seconds += seconds

    def reduce(self, gather) -> dict[str, float]:
        """The window's metrics over all processes (through ``gather``); then a new window starts."""
        if "mmr/scoring_time_fraction" in self.metrics:
            seconds = 0.0 if self.started is None else time.perf_counter() - self.started
            self.record("mmr/scoring_time_fraction", self.scoring_seconds / max(seconds, 1e-9))
        local = []
        for name, kind in self.metrics.items():
            values = self.values.get(name, [])
            if kind == "mean":
                local += [sum(value * count for value, count in values), sum(count for _, count in values)]
            elif kind == "total":
                local += [sum(value for value, _ in values), 1]
            else:
                local += [values[-1][0] if values else 0.0, 1 if values else 0]
        gathered = gather(torch.tensor([local], dtype=torch.float64)).sum(dim=0).tolist()
        reduced = {}
        for i, (name, kind) in enumerate(self.metrics.items()):
            value, count = gathered[2 * i], gathered[2 * i + 1]
            if kind == "total":
                reduced[name] = value
            elif count:
                reduced[name] = value / count
        self.values.clear()
        self.scoring_seconds = 0.0
        self.started = time.perf_counter()
        return reduced


class MMRTrainer(Trainer):
    """``Trainer`` whose training loss is ``CE + alpha(step)·R`` and whose steps train on selected candidates.

    - ``compute_loss`` adds ``alpha·R`` (:func:`~mmr_transformers.margins.multi_margin_penalty`) while
      training only; evaluation loss stays the model's plain loss.
    - With ``selection != "none"`` the train DataLoader yields candidate micro-batches of ``ceil(k·b)``
      samples; each is cut by :func:`~mmr_transformers.selection.select_rows` (scored without gradients in
      eval mode) to the ``b`` samples the strategy prefers before the usual forward/backward (sequence
      columns that are padding in every kept row are dropped). An epoch therefore scores every sample once
      and trains on about ``1/k`` of them. The scoring pass can be made cheaper: an int8 copy of the model,
      truncated text, downscaled images.
    - With ``selection_source="cached"`` there is no scoring pass: a :class:`CachedScoreBatchSampler`
      plans each epoch's ``ceil(N/k)`` samples from the scores the training forward left in its cache; its
      state rides each checkpoint (``mmr_sampler_state.pt``, loaded without pickle).
    - With ``prune_score`` set, a :class:`~mmr_transformers.pruning.PruningBatchSampler` leaves a random share of
      the well-learned samples (cached training loss or margin) out of each pass and weights the kept ones' loss
      up (InfoBatch's unbiased pruning), keeping every sample for the last ``1 - prune_anneal`` of training.
    - Sequence-classification models declare ``forward(**kwargs)`` but return a per-batch mean loss, so
      the stock ``Trainer`` would skip dividing it by the gradient-accumulation steps (and multiply it by
      the process count). ``MMRTrainer`` treats the loss as the per-batch mean it is.

    The settings are read from ``args`` (:class:`MMRTrainingArguments`) as ``self.mmr``; plain
    ``TrainingArguments`` get :class:`~mmr_transformers.settings.MMRSettings`' defaults.
    """

    SAMPLE_INDEX = "mmr_sample_index"
    SAMPLE_WEIGHT = "mmr_sample_weight"
    SAMPLER_STATE = "mmr_sampler_state.pt"

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *pargs, **kwargs):
        self.mmr: MMRSettings = args if isinstance(args, MMRSettings) else MMRSettings()
        self.mmr.validate_mmr_settings()  # again: fields may have been changed since the arguments were built
        self.strategy = get_selection_strategy(self.mmr.selection) if self.mmr.selection_enabled else None
        self._head: ClassifierHead | None = None
        self._head_owner: nn.Module | None = None
        if model is not None:
            self._classifier_head(model)  # bad heads fail before any work is done
        self._window = LogWindow(self._logged_metrics())
        self._int8 = Int8Scorer(self.mmr.selection_scorer_refresh_steps) if self.mmr.selection_scorer == "int8" else None
        self._sampler: ScoreCache | None = None
        self._pending_scores: torch.Tensor | None = None
        super().__init__(model, args, *pargs, **kwargs)
        # The model's loss is a per-batch mean, whatever its forward signature says.
        self.model_accepts_loss_kwargs = False
        self._head_verified = False
        streamed = self.train_dataset is not None and not hasattr(self.train_dataset, "__len__")
        if streamed and self._uses_margins and self.args.world_size > 1 and not self.args.dataloader_drop_last:
            raise ValueError(
                "over several processes Accelerate fills the last batch of an IterableDataset with repeated samples, "
                "and without a dataset length MMRTrainer cannot tell them apart, so they would be scored and trained "
                "as new. Set dataloader_drop_last=True (the short last round is dropped), or use a map-style dataset."
            )
        if self._score_cached and streamed:
            setting, other = (("selection_source='cached'", "selection_source='fresh'") if self.mmr.cached_selection
                              else (f"prune_score={self.mmr.prune_score!r}", "prune_score='none'"))
            raise ValueError(
                f"{setting} keeps a score per dataset index and plans each epoch over all N samples, so it needs a "
                f"dataset with a length and indexing; got a {type(self.train_dataset).__name__} (an IterableDataset). "
                f"Use {other}, or a map-style dataset (datasets.Dataset)."
            )
        if self.mmr.pruning_enabled:
            self._check_pruning_settings()
        if self._int8 is not None and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                "selection_scorer='int8' quantizes a whole copy of the model, which a sharded model (FSDP, DeepSpeed "
                "ZeRO-3) does not hold on any one process. Use selection_scorer='model' (with --bf16 on GPUs)."
            )
        if self._int8 is not None and self.args.device.type != "cpu":
            raise ValueError(
                f"selection_scorer='int8' scores with a dynamically quantized copy, which runs on CPU only, but "
                f"training runs on {self.args.device}. Use selection_scorer='model' here (on a GPU the scoring pass "
                "is already cheap in bf16/fp16: set --bf16)."
            )
        if getattr(self.args, "margin_diagnostics", False):  # first: its pass belongs to the evaluation that callbacks
            # such as a timeline of training seconds leave out when their on_evaluate runs
            self.callback_handler.callbacks.insert(0, MarginDiagnosticsCallback(self))

    # ---- the classifier -------------------------------------------------------------------------

    @property
    def _uses_margins(self) -> bool:
        return self.mmr.mmr_enabled or self.mmr.selection_enabled or self.mmr.pruning_enabled

    @property
    def _score_cached(self) -> bool:
        """The training forward leaves each sample's score in the sampler's cache, which plans the next batches."""
        return self.mmr.cached_selection or self.mmr.pruning_enabled

    def _check_pruning_settings(self) -> None:
        args = self.args
        if args.max_steps <= 0:
            raise ValueError(
                f"prune_score={self.mmr.prune_score!r} needs max_steps > 0: a pass over the data leaves out a share of "
                "the well-learned samples that is known only as training goes, so the number of steps of "
                "num_train_epochs (and the LR schedule built on it) is not known in advance. Set max_steps to the "
                "steps you want to pay for, e.g. num_train_epochs · ceil(N / b) times the share you expect to keep "
                "(InfoBatch's ~0.6-0.7 at prune_ratio=0.5)."
            )
        if args.label_smoothing_factor or self.compute_loss_func is not None:
            raise ValueError(
                f"prune_score={self.mmr.prune_score!r} weights each sample's cross-entropy to keep the gradient "
                "unbiased, which replaces the loss; label_smoothing_factor and compute_loss_func would be dropped "
                "silently. Remove them, or set prune_score='none'."
            )

    def training_progress(self) -> float:
        """The share of training done, ``global_step / max_steps`` (subclass it for a wall-clock budget)."""
        return min(1.0, self.state.global_step / max(self.state.max_steps, 1))

    def _logged_metrics(self) -> dict[str, str]:
        """The ``mmr/*`` metrics these settings log, and how each is reduced over a window (see ``LogWindow``)."""
        metrics = {}
        if self.mmr.mmr_enabled:
            metrics |= {"mmr/penalty": "mean", "mmr/alpha": "latest"}
        if self.mmr.fresh_selection:
            metrics |= {"mmr/mms_candidates": "mean", "mmr/mms_selected": "mean", "mmr/samples_scored": "total",
                        "mmr/samples_trained": "total", "mmr/scoring_time_fraction": "latest"}
            if self.mmr.selection_agreement_steps:
                metrics["mmr/rank_agreement"] = "mean"
            if self.mmr.selection_scorer == "int8":
                metrics["mmr/scorer_refreshes"] = "total"
        if self._score_cached:
            metrics |= {"mmr/samples_trained": "total", "mmr/cache_coverage": "latest"}
        if self.mmr.pruning_enabled:
            metrics["mmr/pruned_share"] = "latest"
        return metrics

    def _classifier_head(self, model: nn.Module | None = None) -> ClassifierHead | None:
        """The last linear layer of the current model, found once per model object."""
        model = self.model if model is None else model
        if not self._uses_margins:
            return None
        if self._head is None or self._head_owner is not model:
            head = find_classifier(model, self.mmr.classifier_module)
            method = "MMR (mmr_alpha > 0)" if self.mmr.mmr_enabled else f"selection={self.mmr.selection!r}"
            check_classification_head(model, head, method)
            self._head, self._head_owner = head, model
        return self._head

    # ---- Multi-Margin Regularization ------------------------------------------------------------

    def current_mmr_alpha(self) -> float:
        """alpha at the optimizer step being computed."""
        return alpha_at(self.mmr.mmr_alpha_schedule, self.state.global_step, self.state.max_steps,
                        self.mmr.mmr_alpha, self.mmr.mmr_alpha_end)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The parent's loss, plus ``alpha·R`` when training with MMR on; with cached selection or pruning, the
        trained samples' scores are taken from the same forward pass; pruning weights each sample's cross-entropy."""
        scale = inputs.pop(self.LOSS_SCALE, None)
        sample_weights = inputs.pop(self.SAMPLE_WEIGHT, None)
        scale = None if scale is None else float(scale)
        if scale == 0.0:  # a placeholder: forward for the gradient all-reduce, contribute nothing
            outputs = model(**{k: v for k, v in inputs.items() if k not in self.label_names})
            loss = logits_of(outputs).sum() * 0.0
            return (loss, outputs) if return_outputs else loss
        penalize = self.mmr.mmr_enabled and model.training
        cache_scores = self._score_cached and model.training
        if not (penalize or cache_scores or scale):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get("labels")
        if cache_scores and self.mmr.pruning_enabled and labels is None:
            raise ValueError(
                f"prune_score={self.mmr.prune_score!r} scores how well each training sample is learned from its label, "
                f"but the batch has only {sorted(inputs)}. Add a 'labels' column to the training data, or set "
                "prune_score='none'."
            )
        if penalize and labels is None:
            raise ValueError(
                "MMR (mmr_alpha > 0) needs the labels of each training sample to find its most competitive wrong "
                f"class, but the batch has only {sorted(inputs)}. Add a 'labels' column to the training data, "
                "or set mmr_alpha=0."
            )
        head = self._classifier_head()
        with head.capture() as captured:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        logits = logits_of(outputs)
        if cache_scores:
            with torch.no_grad():  # scores of the layer's output in fp32 where the forward ran in bf16 or fp16
                scored = captured.precise_logits(logits.detach())
        if cache_scores and self.mmr.pruning_enabled:
            self._pending_scores = learned_score(self.mmr.prune_score, scored, captured.weight.detach(), labels)
            loss = weighted_cross_entropy(logits, labels, sample_weights).to(loss.dtype)
        elif cache_scores:
            self._pending_scores = selection_priority(
                self.strategy, scored, captured.weight.detach(), labels, self._selection_generator(0)
            )
        loss = self._rescaled_loss(loss, scale)
        if penalize:
            penalty = multi_margin_penalty(captured.features_for(logits), logits, labels, captured.weight)
            alpha = self.current_mmr_alpha()
            value = penalty.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the MMR penalty is {value} at step {self.state.global_step}: the model's weights or features have "
                    "diverged (NaN/inf). Training stops rather than go on with a meaningless loss; lower the learning "
                    "rate or mmr_alpha, clip gradients (max_grad_norm), and resume from the last checkpoint."
                )
            self._window.record("mmr/penalty", value)
            self._window.record("mmr/alpha", alpha)
            if self.compute_loss_func is not None:  # its loss is already scaled for accumulation; R is a batch mean
                penalty = penalty / self.current_gradient_accumulation_steps
            if scale is not None:  # R is a per-batch mean, whatever the loss is
                penalty = penalty * scale
            loss = loss + (alpha * penalty).to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _rescaled_loss(self, loss: torch.Tensor, scale: float | None) -> torch.Tensor:
        """The loss of a micro-batch that shares its optimizer step with placeholders: the model's loss is a
        per-batch mean and takes ``scale``; a ``compute_loss_func``'s, normalised by ``num_items_in_batch``, which
        counts real labels only, over all processes (``average_tokens_across_devices``), is exact as it is."""
        if scale is None or (self.compute_loss_func is not None and self.args.average_tokens_across_devices):
            return loss
        return loss * scale

    # ---- Selective sampling ---------------------------------------------------------------------

    def candidate_batch_size(self) -> int:
        """Samples per candidate micro-batch: ``ceil(k·b)``."""
        return math.ceil(as_written(self.mmr.selection_ratio) * self._train_batch_size)

    def get_train_dataloader(self):
        """The real (Accelerate-prepared) DataLoader: candidate batches of ``ceil(k·b)`` with fresh selection,
        batches planned from cached scores with cached selection. Called at the start of every training attempt
        (also each retry of ``auto_find_batch_size``), so the metrics window starts afresh here."""
        self._window = LogWindow(self._logged_metrics())
        if self._uses_margins and self.train_dataset is not None:
            self._check_dataset_labels()
        if self.mmr.pruning_enabled and self.train_dataset is not None:
            return self._cached_train_dataloader()
        if not self.mmr.selection_enabled:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if self.mmr.cached_selection:
            return self._cached_train_dataloader()
        loader = self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.candidate_batch_size(),
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )
        if self.args.dataloader_drop_last and hasattr(self.train_dataset, "__len__") and len(loader) == 0:
            raise ValueError(
                f"dataloader_drop_last=True drops every candidate batch: {len(self.train_dataset)} training samples "
                f"make no full batch of ceil(k·b) = {self.candidate_batch_size()} candidates per process "
                f"({self.args.world_size} process(es)), so training would run 0 steps. Lower selection_ratio or "
                "per_device_train_batch_size, or set dataloader_drop_last=False."
            )
        return loader

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the micro-batches of one optimizer step, drop the rows Accelerate added to even out the last
        round over processes, and (fresh selection) cut each candidate micro-batch to its selected rows."""
        self._window.start()
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not self._uses_margins:
            return batch_samples, num_items_in_batch
        for batch in batch_samples:
            self._check_batch(batch)
        trimmed = self._without_padding(batch_samples)
        if self.mmr.fresh_selection:
            choose = self._select if self._selecting_now() else self._random_rows
            trimmed = [choose(batch, micro_step) for micro_step, batch in enumerate(trimmed)]
        if trimmed is batch_samples:
            return batch_samples, num_items_in_batch
        counted = [{**b, "labels": torch.full_like(b["labels"], -100)} if self._is_placeholder(b) and "labels" in b
                   else b for b in trimmed]
        return trimmed, self._get_num_items_in_batch(counted, device)

    # ---- Checks on the first batches, before any scoring or optimizer step ----------------------

    def _check_batch(self, batch: dict[str, Any]) -> None:
        """Labels must be one class index per sample; on the first batch, the head's output must be the logits."""
        labels = batch.get("labels")
        if labels is not None:
            check_class_labels(labels, self._classifier_head().num_classes)
        if not self._head_verified:
            self._verify_head(batch)

    def _verify_head(self, batch: dict[str, Any]) -> None:
        """Forward two rows of the first batch and check that the classifier's output *is* the model's logits
        (MMS-only runs would otherwise score with a layer whose margins mean nothing)."""
        model = self.model_wrapped if (self.is_fsdp_enabled or self.is_deepspeed_enabled) else self.model
        rows = torch.arange(min(2, batch_size_of(batch)))
        skip = {*self.label_names, self.LOSS_SCALE, self.SAMPLE_INDEX, self.SAMPLE_WEIGHT}
        inputs = self._prepare_inputs({k: v for k, v in take_rows(batch, rows).items() if k not in skip})
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.compute_loss_context_manager(), self._classifier_head().capture() as captured:
                logits = logits_of(model(**inputs))
            captured.features_for(logits)
        finally:
            model.train(was_training)
        self._head_verified = True

    def _check_dataset_labels(self) -> None:
        """The whole label column of a ``datasets.Dataset`` at once, so a bad row far into the data fails now."""
        dataset = self.train_dataset
        column = next((c for c in ("labels", "label") if c in getattr(dataset, "column_names", ())), None)
        if column is None:
            return
        try:
            labels = torch.tensor(list(dataset[column]))
        except (TypeError, ValueError) as error:  # ragged multi-hot rows, strings, ...
            raise ValueError(f"the training set's {column!r} column is not one class index per sample: {error}") from error
        try:
            check_class_labels(labels, self._classifier_head().num_classes)
        except ValueError as error:
            raise ValueError(f"the training set's {column!r} column: {error}") from None

    # ---- The last round of an epoch over several processes ----------------------------------------
    #
    # Accelerate gives every process a full micro-batch in the last round of an epoch by filling it with samples
    # from the start of the epoch (its default ``even_batches``). Trained or selected from, those repeats would
    # make several processes train other rows than one process with gradient accumulation. So each micro-batch
    # keeps only its real rows; a process left with none runs a *placeholder*: one row forwarded with a zero
    # loss, so the gradient all-reduce still happens, and nothing is counted, scored or cached. The real
    # micro-batches of that step scale their per-batch means (the model's loss, R) by (micro-batches in the step) /
    # (real micro-batches), which gives the gradient that one process with accumulation computes over the real
    # micro-batches alone (a ``compute_loss_func``'s loss, divided by the real labels of the step, needs no scale).

    LOSS_SCALE = "mmr_loss_scale"

    def _real_rows(self, num_micro_batches: int, size: int, rank: int) -> list[int]:
        """How many leading rows of each of process ``rank``'s micro-batches of this step (``size`` rows each, as
        Accelerate fills them) are real samples. Every process computes the same numbers without communicating."""
        world = self.args.world_size
        if self._score_cached:  # micro-batch m is plan batch (consumed + m·world + rank), if there is one
            plan, start = self._sampler.plan, self._sampler.batches_consumed + rank
            return [len(plan[start + m * world]) if start + m * world < len(plan) else 0
                    for m in range(num_micro_batches)]
        real = [size] * num_micro_batches
        state = self.accelerator.gradient_state
        if state.end_of_dataloader and state.remainder > 0 and real:  # remainder: real samples of the last round
            real[-1] = min(size, max(0, state.remainder - rank * size))
        return real

    def _without_padding(self, batch_samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The micro-batches with their filled-in rows dropped (placeholders where none is real), each carrying
        its loss scale; ``batch_samples`` itself when nothing was filled in."""
        world = self.args.world_size
        if world == 1 or not batch_samples:
            return batch_samples
        size = batch_size_of(batch_samples[0])
        every_rank = [self._real_rows(len(batch_samples), size, rank) for rank in range(world)]
        mine = every_rank[self.args.process_index]
        if all(rows == size for real in every_rank for rows in real):
            return batch_samples
        placeholders = sum(rows == 0 for real in every_rank for rows in real)
        scale = world * len(batch_samples) / (world * len(batch_samples) - placeholders)
        return [{**take_rows(batch, torch.arange(max(rows, 1))), self.LOSS_SCALE: torch.tensor(0.0 if rows == 0 else scale)}
                for batch, rows in zip(batch_samples, mine)]

    def _is_placeholder(self, batch: dict[str, Any]) -> bool:
        scale = batch.get(self.LOSS_SCALE)
        return scale is not None and float(scale) == 0.0

    def _selection_generator(self, micro_step: int) -> torch.Generator:
        return torch.Generator().manual_seed(
            selection_seed(self.args.seed, self.state.global_step, self.args.process_index, micro_step)
        )

    def _select(self, candidates: dict[str, Any], micro_step: int) -> dict[str, Any]:
        """Score one candidate micro-batch (:func:`select_rows`) and keep the strategy's ``b`` rows."""
        if self._is_placeholder(candidates):
            return candidates
        scale = candidates.get(self.LOSS_SCALE)
        candidates = {k: v for k, v in candidates.items() if k != self.LOSS_SCALE}
        started = time.perf_counter()
        n = batch_size_of(candidates)
        num_keep = num_to_keep(n, self.mmr.selection_ratio, self._train_batch_size)
        live = self.model_wrapped if (self.is_fsdp_enabled or self.is_deepspeed_enabled) else self.model
        scorer, weight = self._scorer(live)
        chunk_size = self.mmr.selection_scoring_batch_size or self._train_batch_size
        with self.compute_loss_context_manager():
            inputs = self._prepare_inputs(candidates)
            labels = inputs.get("labels")
            features = {k: v for k, v in inputs.items() if k not in self.label_names}
            cheap = shorten_for_scoring(features, self.mmr.selection_scoring_max_length,
                                        self.mmr.selection_scoring_image_scale)
            chosen = select_rows(scorer, weight, cheap, num_keep, self.strategy, labels, chunk_size=chunk_size,
                                 generator=self._selection_generator(micro_step))
            if self._agreement_due(micro_step):
                full = select_rows(live, self._classifier_head(), features, num_keep, self.strategy, labels,
                                   chunk_size=chunk_size, generator=self._selection_generator(micro_step))
                self._window.record("mmr/rank_agreement", rank_agreement(chosen.priority, full.priority))
        if not bool(chosen.priority.isfinite().all()):
            raise FloatingPointError(
                f"selection={self.mmr.selection!r} scored candidates {chosen.priority.tolist()[:4]}... at step "
                f"{self.state.global_step}: non-finite scores mean the model has diverged (NaN/inf weights or features). "
                "Lower the learning rate, clip gradients (max_grad_norm), and resume from the last checkpoint."
            )
        self._window.record("mmr/mms_candidates", chosen.margins.mean().item(), count=n)
        self._window.record("mmr/mms_selected", chosen.margins[chosen.keep].mean().item(), count=len(chosen.keep))
        self._window.record("mmr/samples_scored", n)
        self._window.record("mmr/samples_trained", len(chosen.keep))
        self._window.add_scoring_time(time.perf_counter() - started)
        selected = trim_padding(take_rows(candidates, chosen.keep.cpu()))
        return selected if scale is None else {**selected, self.LOSS_SCALE: scale}

    def _selecting_now(self) -> bool:
        """Whether this optimizer step scores and selects: inside ``[selection_start, selection_end)`` of training
        (:meth:`training_progress`) and not an interrupting plain step."""
        every = self.mmr.selection_interrupt
        interrupted = every > 0 and (self.state.global_step + 1) % every == 0
        return self.mmr.selection_start <= self.training_progress() < self.mmr.selection_end and not interrupted

    def _random_rows(self, candidates: dict[str, Any], micro_step: int) -> dict[str, Any]:
        """A plain step outside the selection window: a seeded random ``b`` of the candidates, nothing scored."""
        if self._is_placeholder(candidates):
            return candidates
        scale = candidates.get(self.LOSS_SCALE)
        candidates = {k: v for k, v in candidates.items() if k != self.LOSS_SCALE}
        n = batch_size_of(candidates)
        num_keep = num_to_keep(n, self.mmr.selection_ratio, self._train_batch_size)
        keep = torch.randperm(n, generator=self._selection_generator(micro_step))[:num_keep].sort().values
        self._window.record("mmr/samples_trained", num_keep)
        selected = trim_padding(take_rows(candidates, keep))
        return selected if scale is None else {**selected, self.LOSS_SCALE: scale}

    def _agreement_due(self, micro_step: int) -> bool:
        every = self.mmr.selection_agreement_steps
        return every > 0 and micro_step == 0 and self.state.global_step % every == 0

    def _scorer(self, live: nn.Module) -> tuple[nn.Module, torch.Tensor | ClassifierHead]:
        """The model that scores candidates and its classifier weight: the live model (with its head, whose weight
        is taken in the scoring forward, full even when sharded), or its int8 copy
        (brought up to date every ``selection_scorer_refresh_steps`` optimizer steps)."""
        if self._int8 is None:
            return live, self._classifier_head()
        if self._int8.update(self.accelerator.unwrap_model(self.model), self._classifier_head().weight,
                             self.state.global_step):
            self._window.record("mmr/scorer_refreshes", 1)
        return self._int8.module, self._int8.weight

    # ---- Selection from cached scores -----------------------------------------------------------

    def _cached_train_dataloader(self) -> DataLoader:
        """Batches planned by a :class:`CachedScoreBatchSampler` (or, pruning, a :class:`PruningBatchSampler`, whose
        batches carry each sample's loss weight too) over the whole training set; every batch carries its dataset
        indices so the training forward can refresh their cached scores."""
        dataset, collator = self.train_dataset, self.data_collator
        if hasattr(dataset, "column_names"):  # a datasets.Dataset: drop the columns the model does not take
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed  # as the Trainer's samplers
        if self.mmr.pruning_enabled:
            self._sampler = PruningBatchSampler(len(dataset), self._train_batch_size, self.mmr.prune_ratio,
                                                self.mmr.prune_anneal, self.training_progress, seed=seed)
        else:
            self._sampler = CachedScoreBatchSampler(
                len(dataset), self._train_batch_size, self.mmr.selection_ratio, self.mmr.selection_exploration,
                seed=seed, drop_last=self.args.dataloader_drop_last,
            )
        keys = (self.SAMPLE_INDEX, self.SAMPLE_WEIGHT)
        loader = DataLoader(
            IndexedDataset(dataset, *keys), batch_sampler=self._sampler,
            collate_fn=IndexedCollator(collator, *keys), num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory, persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        return self.accelerator.prepare(loader)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The parent's step; with cached selection or pruning, the batch's scores (all processes') go into the
        cache."""
        if not self._score_cached:
            return super().training_step(model, inputs, num_items_in_batch)
        indices = inputs.pop(self.SAMPLE_INDEX).to(self.args.device)
        placeholder = self._is_placeholder(inputs)
        labels = inputs.get("labels")  # before the loss, which may pop them
        loss = super().training_step(model, inputs, num_items_in_batch)
        if placeholder:  # nothing trained: nothing to cache
            indices, scores = torch.full_like(indices, -1), torch.zeros(len(indices), dtype=torch.float64,
                                                                        device=self.args.device)
        else:
            scores = self._pending_scores.double().to(self.args.device)
            if labels is not None:  # a row the loss skips (IGNORE_INDEX) may have no score: it stays uncached
                indices = indices.masked_fill((labels.to(indices.device) == IGNORE_INDEX) & scores.isnan(), -1)
        pad = dict(dim=0, pad_index=-1)
        indices = self.accelerator.gather(self.accelerator.pad_across_processes(indices, **pad))
        scores = self.accelerator.gather(self.accelerator.pad_across_processes(scores.to(self.args.device), **pad))
        self._sampler.update(indices, scores)
        self._sampler.consumed(self.args.world_size)
        self._window.record("mmr/samples_trained", int((indices >= 0).sum()) / self.args.world_size)
        self._window.record("mmr/cache_coverage", self._sampler.coverage())
        if self.mmr.pruning_enabled:
            self._window.record("mmr/pruned_share", self._sampler.last_pruned / self._sampler.num_samples)
        return loss

    # ---- Checkpoints: MMR state rides the Trainer's own save and resume path -------------------------

    SETTINGS_FILE = "mmr_settings.json"
    # what decides which samples a resumed run draws, scores and trains on next
    DATA_ORDER_SETTINGS = ("selection", "selection_ratio", "selection_source", "selection_exploration", "prune_score",
                           "prune_ratio", "prune_anneal")

    def _data_order_settings(self) -> dict[str, Any]:
        return {**{name: getattr(self.mmr, name) for name in self.DATA_ORDER_SETTINGS},
                "per_device_train_batch_size": self._train_batch_size,
                "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
                "world_size": self.args.world_size}

    def _save_checkpoint(self, model, trial) -> None:
        """The parent's checkpoint, plus the settings that shape the data order and (cached selection) the
        cached-score sampler: scores, generator, current pass."""
        super()._save_checkpoint(model, trial)
        if not (self._uses_margins and self.args.should_save):
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        with open(os.path.join(folder, self.SETTINGS_FILE), "w") as f:
            json.dump(self._data_order_settings(), f, indent=1)
        if self._sampler is not None and not self.args.save_only_model:
            torch.save(self._sampler.state_dict(), os.path.join(folder, self.SAMPLER_STATE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The parent's resume of the training state; then a resume that would change the data order is refused,
        and the cached-score sampler is restored (before the first batch is drawn; ``weights_only=True``, so a
        checkpoint file cannot run code)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or not self._uses_margins:
            return
        if not glob.glob(os.path.join(checkpoint, "rng_state*.pth")):  # every process saves one, unless model-only
            raise ValueError(
                f"{checkpoint} was saved with save_only_model=True: it holds the model's weights but not the optimizer, "
                "scheduler, random-number and sampler states that a resumed run continues from, so training would go on "
                "from another state than the interrupted run's. Resume from a checkpoint saved with save_only_model=False, "
                "or start a new run from these weights (from_pretrained / --model_name_or_path)."
            )
        path = os.path.join(checkpoint, self.SAMPLER_STATE)
        if self._sampler is not None and not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {self.SAMPLER_STATE}: it was not saved by a run with "
                "selection_source='cached' or prune_score, so the cached scores cannot be restored."
            )
        self._check_resumed_settings(checkpoint)
        if self._sampler is None:
            return
        try:
            state = torch.load(path, weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} holds objects other than tensors, lists and numbers, so it is not a sampler state saved by "
                "MMRTrainer and was not loaded (loading it could run code). Resume from a checkpoint this library "
                "wrote, or delete the file and train afresh."
            ) from error
        self._sampler.load_state_dict(state)

    def _check_resumed_settings(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, self.SETTINGS_FILE)
        if not os.path.isfile(path):
            return  # a checkpoint of a run without MMR or selection: nothing of ours to continue
        with open(path) as f:
            saved = json.load(f)
        now = self._data_order_settings()
        changed = [name for name in now if name in saved and saved[name] != now[name]]
        if changed:
            raise ValueError(
                f"resuming from {checkpoint} with other settings than it was saved with: "
                + ", ".join(f"{name} {saved[name]!r} -> {now[name]!r}" for name in changed)
                + ". These decide which samples the run draws, scores and trains on next, so the resumed run would "
                "silently differ from the interrupted one. Resume with the saved values, or start a new run."
            )

    # ---- Logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the MMR/selection metrics of the window to each training log (one collective per log)."""
        if "loss" in logs and self._uses_margins:
            logs.update(self._window.reduce(lambda t: self.accelerator.gather(t.to(self.args.device)).cpu()))
        super().log(logs, start_time)

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
- ``mms_rank_agreement``: Spearman agreement of cheap and full-model scores (``selection_agreement_steps``).
- ``scorer_refreshes``: builds and refreshes of the int8 scoring copy; ``cache_coverage``: share of samples with a cached score.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .heads import ClassifierHead, check_classification_head, find_classifier
from .margins import minimal_margin_scores, multi_margin_penalty
from .schedules import alpha_at
from .sampler import CachedScoreBatchSampler, IndexedCollator, IndexedDataset
from .scoring import quantized_scorer, rank_agreement, refresh_quantized_scorer, shorten_for_scoring
from .selection import (
    batch_size_of,
    chunked_logits,
    get_selection_strategy,
    logits_of,
    lowest,
    num_to_keep,
    selection_priority,
    smallest_margin,
    take_rows,
    trim_padding,
)
from .training_args import mmr_setting, validate_mmr_settings


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
      therefore scores every sample once and trains on about ``1/k`` of them. The scoring pass can be
      made cheaper: an int8 copy of the model, truncated text, downscaled images.
    - With ``selection_source="cached"`` there is no scoring pass: a :class:`CachedScoreBatchSampler`
      plans each epoch's ``ceil(N/k)`` samples from the scores the training forward left in its cache.
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
        self._cached = self._strategy is not None and mmr_setting(args, "selection_source") == "cached"
        self._exploration = mmr_setting(args, "selection_exploration")
        self._scorer_kind = mmr_setting(args, "selection_scorer")
        self._scorer_refresh_steps = mmr_setting(args, "selection_scorer_refresh_steps")
        self._scoring_max_length = mmr_setting(args, "selection_scoring_max_length")
        self._scoring_image_scale = mmr_setting(args, "selection_scoring_image_scale")
        self._agreement_steps = mmr_setting(args, "selection_agreement_steps")
        self._int8_scorer: tuple[nn.Module, torch.Tensor, int] | None = None  # (copy, its head weight, step built)
        self._sampler: CachedScoreBatchSampler | None = None
        self._pending_scores: torch.Tensor | None = None
        self._resume_checkpoint: str | None = None
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
        if self._scorer_kind == "int8" and self.args.device.type != "cpu":
            raise ValueError(
                f"selection_scorer='int8' scores with a dynamically quantized copy, which runs on CPU only, but "
                f"training runs on {self.args.device}. Use selection_scorer='model' here (on a GPU the scoring pass "
                "is already cheap in bf16/fp16: set --bf16)."
            )

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
        """The parent's loss, plus ``alpha·R`` when training with MMR on; with cached selection, the trained
        samples' scores are taken from the same forward pass."""
        penalize = self._mmr_enabled and model.training
        cache_scores = self._cached and model.training
        if not (penalize or cache_scores):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get("labels")
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
            self._pending_scores = selection_priority(
                self._strategy, logits.detach(), head.weight.detach(), labels, self._selection_generator(0)
            )
        if not penalize:
            return (loss, outputs) if return_outputs else loss
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
        """The real (Accelerate-prepared) DataLoader: candidate batches of ``ceil(k·b)`` with fresh selection,
        batches planned from cached scores with cached selection."""
        if self._strategy is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if self._cached:
            return self._cached_train_dataloader()
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
        if self._strategy is None or self._cached:
            return batch_samples, num_items_in_batch
        selected = [self._select(batch, micro_step) for micro_step, batch in enumerate(batch_samples)]
        return selected, self._get_num_items_in_batch(selected, device)

    def _selection_generator(self, micro_step: int) -> torch.Generator:
        return torch.Generator().manual_seed(
            selection_seed(self.args.seed, self.state.global_step, self.args.process_index, micro_step)
        )

    def _select(self, candidates: dict[str, Any], micro_step: int) -> dict[str, Any]:
        """Score one candidate micro-batch without gradients and keep the strategy's ``b`` rows."""
        started = time.perf_counter()
        n = batch_size_of(candidates)
        num_keep = num_to_keep(n, self._selection_ratio, self._train_batch_size)
        live = self.model_wrapped if (self.is_fsdp_enabled or self.is_deepspeed_enabled) else self.model
        scorer, weight = self._scorer(live)
        was_training = live.training
        live.eval()
        try:
            with torch.inference_mode(), self.compute_loss_context_manager():
                inputs = self._prepare_inputs(candidates)
                labels = inputs.get("labels")
                features = {k: v for k, v in inputs.items() if k not in self.label_names}
                cheap = shorten_for_scoring(features, self._scoring_max_length, self._scoring_image_scale)
                logits = chunked_logits(scorer, cheap, self._scoring_chunk_size)
                priority = selection_priority(self._strategy, logits, weight, labels, self._selection_generator(micro_step))
                keep = lowest(priority, num_keep)
                margins = priority if self._strategy.priority is smallest_margin else minimal_margin_scores(logits, weight)
                self._window_means["mms_candidates"].append(margins.mean().item())
                self._window_means["mms_selected"].append(margins[keep].mean().item())
                if self._agreement_due(micro_step):
                    full = chunked_logits(live, features, self._scoring_chunk_size)
                    full_priority = selection_priority(self._strategy, full, self._classifier_head().weight, labels,
                                                       self._selection_generator(micro_step))
                    self._window_means["mms_rank_agreement"].append(rank_agreement(priority, full_priority))
        finally:
            live.train(was_training)
        keep = keep.cpu().clone()  # a normal tensor, usable outside inference mode
        self._window_sums["samples_scored"] += n
        self._window_sums["samples_trained"] += len(keep)
        self._window_sums["scoring_seconds"] += time.perf_counter() - started
        return trim_padding(take_rows(candidates, keep))

    @property
    def _scoring_chunk_size(self) -> int:
        return self._scoring_batch_size or self._train_batch_size

    def _agreement_due(self, micro_step: int) -> bool:
        return self._agreement_steps > 0 and micro_step == 0 and self.state.global_step % self._agreement_steps == 0

    def _scorer(self, live: nn.Module) -> tuple[nn.Module, torch.Tensor]:
        """The model that scores candidates and its classifier weight: the live model, or its int8 copy
        (brought up to date every ``selection_scorer_refresh_steps`` optimizer steps)."""
        if self._scorer_kind == "model":
            return live, self._classifier_head().weight
        step = self.state.global_step
        if self._int8_scorer is None or step - self._int8_scorer[2] >= self._scorer_refresh_steps:
            model = self.accelerator.unwrap_model(self.model)
            weight = self._classifier_head().weight.detach().clone()
            scorer = quantized_scorer(model) if self._int8_scorer is None else refresh_quantized_scorer(self._int8_scorer[0], model)
            self._int8_scorer = (scorer, weight, step)
            self._window_sums["scorer_refreshes"] += 1
        return self._int8_scorer[0], self._int8_scorer[1]

    # ---- Selection from cached scores -----------------------------------------------------------

    SAMPLE_INDEX = "mmr_sample_index"
    SAMPLER_STATE = "mmr_sampler_state.pt"

    def _cached_train_dataloader(self) -> DataLoader:
        """Batches planned by a :class:`CachedScoreBatchSampler` over the whole training set; every batch
        carries its dataset indices so the training forward can refresh their cached scores."""
        dataset, collator = self.train_dataset, self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        self._sampler = CachedScoreBatchSampler(
            len(dataset), self._train_batch_size, self._selection_ratio, self._exploration,
            seed=self.args.seed, drop_last=self.args.dataloader_drop_last,
        )
        if self._resume_checkpoint is not None:
            path = os.path.join(self._resume_checkpoint, self.SAMPLER_STATE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{self._resume_checkpoint} has no {self.SAMPLER_STATE}: it was not saved by a run with "
                    "selection_source='cached', so the cached scores cannot be restored."
                )
            self._sampler.load_state_dict(torch.load(path, weights_only=False))
        loader = DataLoader(
            IndexedDataset(dataset, self.SAMPLE_INDEX), batch_sampler=self._sampler,
            collate_fn=IndexedCollator(collator, self.SAMPLE_INDEX), num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory, persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        return self.accelerator.prepare(loader)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The parent's step; with cached selection, the batch's scores (all processes') go into the cache."""
        if not self._cached:
            return super().training_step(model, inputs, num_items_in_batch)
        indices = inputs.pop(self.SAMPLE_INDEX)
        loss = super().training_step(model, inputs, num_items_in_batch)
        pad = dict(dim=0, pad_index=-1)
        indices = self.accelerator.gather(self.accelerator.pad_across_processes(indices.to(self.args.device), **pad))
        scores = self.accelerator.gather(self.accelerator.pad_across_processes(self._pending_scores.double(), **pad))
        self._sampler.update(indices, scores)
        self._sampler.consumed(self.args.world_size)
        self._window_sums["samples_trained"] += int((indices >= 0).sum()) / self.args.world_size
        self._window_means["cache_coverage"] = [self._sampler.coverage()]
        return loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        self._resume_checkpoint = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_rng_state(self, output_dir: str) -> None:
        """Checkpoint the random states, and the cached-score sampler (scores, generator, current pass)."""
        super()._save_rng_state(output_dir)
        if self._sampler is not None and self.args.should_save:
            torch.save(self._sampler.state_dict(), os.path.join(output_dir, self.SAMPLER_STATE))

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

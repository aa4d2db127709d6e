"""Selective sampling over a candidate batch (thesis §4, Algorithm 1, and its baselines).

A strategy maps the candidates' logits to a *priority* per sample; the ``num_keep`` samples with the
smallest priority are trained on. :func:`select_rows` is the whole selection step (score without
gradients, rank, keep), usable without ``Trainer``. Adding a strategy is one small registered function::

    @register_selection_strategy("margin_to_label", needs_labels=True)
    def margin_to_label(logits, weight, labels, generator):
        return logits.gather(1, labels[:, None])[:, 0] - logits.max(dim=1).values
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .batching import as_written, batch_size_of, chunked_logits
from .heads import ClassifierHead
from .margins import minimal_margin_scores

PriorityFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class SelectionStrategy:
    """A registered strategy: ``priority(logits, weight, labels, generator) -> (N,)``, lowest kept. A strategy that
    ``draws`` returns random keys relative to its candidate batch, not a score of each sample, so its priorities
    mean nothing outside that batch (and cannot be cached across batches)."""

    name: str
    priority: PriorityFn
    needs_labels: bool
    draws: bool = False


SELECTION_STRATEGIES: dict[str, SelectionStrategy] = {}


def register_selection_strategy(name: str, needs_labels: bool = False,
                                draws: bool = False) -> Callable[[PriorityFn], PriorityFn]:
    """Register ``fn(logits, weight, labels, generator) -> priority[N]``; lowest priority is kept. ``draws=True``
    marks a random draw within the candidate batch (see :class:`SelectionStrategy`)."""

    def register(fn: PriorityFn) -> PriorityFn:
        SELECTION_STRATEGIES[name] = SelectionStrategy(name, fn, needs_labels, draws)
        return fn

    return register


@register_selection_strategy("mms")
def mms_priority(logits, weight, labels, generator):
    """Minimal Margin Score: samples closest to their top-2 decision boundary first."""
    return minimal_margin_scores(logits, weight)


@register_selection_strategy("loss", needs_labels=True)
def loss_priority(logits, weight, labels, generator):
    """Hard-negative mining ("NM-sample"): largest per-sample cross-entropy first."""
    return -F.cross_entropy(logits.float(), labels, reduction="none")


@register_selection_strategy("entropy")
def entropy_priority(logits, weight, labels, generator):
    """Most uncertain predictions first: largest entropy of the softmax."""
    log_p = logits.float().log_softmax(dim=1)
    return (log_p.exp() * log_p).sum(dim=1)


@register_selection_strategy("random", draws=True)
def random_priority(logits, weight, labels, generator):
    """A uniformly random subset: the value of scoring without the value of choosing."""
    return torch.rand(logits.shape[0], generator=generator).to(logits.device)


def percentile_draw(hardness: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Priorities whose lowest ``n`` are a draw of ``n`` rows without replacement, each row weighted by its in-batch
    hardness percentile ``(rank + 1/2) / N`` (rank 0 = the least hard), made by exponential-race keys
    ``-log(u) / weight`` (Efraimidis & Spirakis 2006). The weight is the percentile to the power ``1/keep - 1 = 1``:
    Composer's ``SelectiveBackprop`` default ``keep = 0.5``."""
    percentile = (hardness.argsort().argsort().double() + 0.5) / hardness.shape[0]
    uniform = torch.rand(hardness.shape[0], generator=generator, dtype=torch.float64).to(hardness.device)
    return -uniform.log() / percentile


@register_selection_strategy("selective_backprop", needs_labels=True, draws=True)
def selective_backprop_priority(logits, weight, labels, generator):
    """Selective Backprop (Jiang et al. 2019, as Composer's ``select_using_loss`` samples it): a draw weighted by
    each candidate's in-batch loss percentile (:func:`percentile_draw`)."""
    return percentile_draw(F.cross_entropy(logits.float(), labels, reduction="none"), generator)


def get_selection_strategy(name: str) -> SelectionStrategy:
    try:
        return SELECTION_STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown selection strategy {name!r}; choose one of {sorted(SELECTION_STRATEGIES)}."
        ) from None


def num_to_keep(num_candidates: int, ratio: float, batch_size: int) -> int:
    """``min(b, ceil(n / k))``: a full candidate batch of ``ceil(k·b)`` keeps ``b``, a short last one keeps its share."""
    return max(1, min(batch_size, math.ceil(num_candidates / as_written(ratio))))


def select_candidates(
    strategy: str | SelectionStrategy,
    logits: torch.Tensor,
    weight: torch.Tensor,
    num_keep: int,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices (ascending) of the ``num_keep`` candidates with the lowest priority under ``strategy``."""
    return lowest(selection_priority(strategy, logits, weight, labels, generator), num_keep)


def selection_priority(
    strategy: str | SelectionStrategy,
    logits: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Each candidate's priority under ``strategy`` (lowest is trained on first)."""
    if not isinstance(strategy, SelectionStrategy):
        strategy = get_selection_strategy(strategy)
    if strategy.needs_labels and labels is None:
        raise ValueError(
            f"selection={strategy.name!r} ranks candidates by their labels, but the batch has no labels. "
            "Add a 'labels' column to the training data, or use a label-free strategy such as selection='mms'."
        )
    return strategy.priority(logits, weight, labels, generator)


def lowest(priority: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``num_keep`` smallest priorities."""
    keep = priority.topk(min(num_keep, priority.shape[0]), largest=False, sorted=False).indices
    return keep.sort().values


@dataclass(frozen=True)
class Selection:
    """What :func:`select_rows` decided for one candidate batch of ``N`` rows."""

    keep: torch.Tensor  # (num_keep,) rows to train on, ascending
    priority: torch.Tensor  # (N,) the strategy's priority of each candidate (lowest kept)
    margins: torch.Tensor  # (N,) each candidate's minimal margin score


def select_rows(
    model: Callable[..., Any],
    weight: torch.Tensor | ClassifierHead,
    inputs: Mapping[str, Any],
    num_keep: int,
    strategy: str | SelectionStrategy = "mms",
    labels: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Selection:
    """Score the candidate rows ``inputs`` (model inputs, no labels) and keep the ``num_keep`` that ``strategy``
    prefers: thesis Algorithm 1's selection step.

    Scoring runs without gradients and with ``model`` in eval mode (dropout off, BatchNorm statistics
    untouched); the previous mode is restored. ``weight`` is the ``(C, D)`` weight of the linear layer that
    produces the logits, or that layer's :class:`~mmr_transformers.heads.ClassifierHead`, whose weight is then
    taken inside the forward (the full weight of a sharded model). Rows are scored in length-sorted, padding-trimmed chunks of ``chunk_size`` rows
    (default: all in one pass). The returned tensors are ordinary tensors (usable with autograd).
    """
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.inference_mode(), (weight.capture() if isinstance(weight, ClassifierHead) else nullcontext()) as seen:
            logits = chunked_logits(model, dict(inputs), chunk_size or batch_size_of(inputs),
                                    transform=None if seen is None else seen.precise_logits)
            weight = weight if seen is None else seen.weight
            priority = selection_priority(strategy, logits, weight, labels, generator)
            keep = lowest(priority, num_keep)
            margins = minimal_margin_scores(logits, weight)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    return Selection(keep.clone(), priority.clone(), margins.clone())

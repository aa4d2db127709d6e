"""Selective sampling over a candidate batch (thesis §4, Algorithm 1, and its baselines).

A strategy maps the candidates' logits to a *priority* per sample; the ``num_keep`` samples with the
smallest priority are trained on. Adding a strategy is one small registered function::

    @register_selection_strategy("margin_to_label", needs_labels=True)
    def margin_to_label(logits, weight, labels, generator):
        return logits.gather(1, labels[:, None])[:, 0] - logits.max(dim=1).values
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .margins import minimal_margin_scores

PriorityFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class SelectionStrategy:
    name: str
    priority: PriorityFn
    needs_labels: bool


SELECTION_STRATEGIES: dict[str, SelectionStrategy] = {}


def register_selection_strategy(name: str, needs_labels: bool = False) -> Callable[[PriorityFn], PriorityFn]:
    """Register ``fn(logits, weight, labels, generator) -> priority[N]``; lowest priority is kept."""

    def register(fn: PriorityFn) -> PriorityFn:
        SELECTION_STRATEGIES[name] = SelectionStrategy(name, fn, needs_labels)
        return fn

    return register


@register_selection_strategy("mms")
def smallest_margin(logits, weight, labels, generator):
    """Minimal Margin Score: samples closest to their top-2 decision boundary first."""
    return minimal_margin_scores(logits, weight)


@register_selection_strategy("loss", needs_labels=True)
def largest_loss(logits, weight, labels, generator):
    """Hard-negative mining ("NM-sample"): largest per-sample cross-entropy first."""
    return -F.cross_entropy(logits.float(), labels, reduction="none")


@register_selection_strategy("entropy")
def largest_entropy(logits, weight, labels, generator):
    """Most uncertain predictions first: largest entropy of the softmax."""
    log_p = logits.float().log_softmax(dim=1)
    return (log_p.exp() * log_p).sum(dim=1)


@register_selection_strategy("random")
def uniform_random(logits, weight, labels, generator):
    """A uniformly random subset: the value of scoring without the value of choosing."""
    return torch.rand(logits.shape[0], generator=generator).to(logits.device)


def get_selection_strategy(name: str) -> SelectionStrategy:
    try:
        return SELECTION_STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown selection strategy {name!r}; choose one of {sorted(SELECTION_STRATEGIES)}."
        ) from None


def num_to_keep(num_candidates: int, ratio: float, batch_size: int) -> int:
    """``min(b, ceil(n / k))``: a full candidate batch of ``ceil(k·b)`` keeps ``b``, a short last one keeps its share."""
    return max(1, min(batch_size, math.ceil(num_candidates / ratio)))


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



def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Rows in a collated batch: the first dimension of its first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ValueError(f"cannot tell the batch size: no tensor among the batch keys {list(batch)}.")


def take_rows(batch: Mapping[str, Any], index: torch.Tensor) -> dict[str, Any]:
    """The rows ``index`` of every per-sample entry of a collated batch (tensors and lists)."""
    n = batch_size_of(batch)
    rows = index.tolist()
    taken = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
            taken[key] = value[index.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            taken[key] = type(value)(value[i] for i in rows)
        else:
            taken[key] = value
    return taken


def trim_padding(batch: dict[str, Any], mask_key: str = "attention_mask") -> dict[str, Any]:
    """Drop the sequence columns that are padding in every row (a selected subset is often shorter
    than its candidate batch was padded to). Left and right padding both work."""
    mask = batch.get(mask_key)
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return batch
    used = mask.bool().any(dim=0).nonzero()
    if len(used) == 0:
        return batch
    first, last = int(used[0]), int(used[-1]) + 1
    seq_len = mask.shape[1]
    if (first, last) == (0, seq_len):
        return batch
    return {
        key: value[:, first:last] if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[1] == seq_len else value
        for key, value in batch.items()
    }


def length_sorted_chunks(batch: dict[str, Any], chunk_size: int, mask_key: str = "attention_mask"):
    """Yield ``(row_index, sub_batch)`` over chunks of ``chunk_size`` rows of similar length, each trimmed of
    its padding. Scoring ``k·b`` candidates this way costs about ``k`` passes of ``b`` rows, not one pass
    of ``k·b`` rows padded to the longest candidate."""
    mask = batch.get(mask_key)
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        order = mask.sum(dim=1).argsort(stable=True)
    else:
        order = torch.arange(batch_size_of(batch))
    for index in order.split(chunk_size):
        yield index, trim_padding(take_rows(batch, index), mask_key)


def chunked_logits(model: Callable[..., Any], batch: dict[str, Any], chunk_size: int) -> torch.Tensor:
    """Logits of every row of ``batch`` (model inputs only), computed over :func:`length_sorted_chunks` and put
    back in row order."""
    logits = None
    for index, chunk in length_sorted_chunks(batch, chunk_size):
        chunk_logits = logits_of(model(**chunk))
        if logits is None:
            logits = chunk_logits.new_empty((batch_size_of(batch), chunk_logits.shape[1]))
        logits[index.to(logits.device)] = chunk_logits
    return logits


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output (``ModelOutput``, dict, tuple, or a bare tensor)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        return outputs["logits"]
    return outputs[0]

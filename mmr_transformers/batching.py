"""Collated batches as dicts of per-row tensors: row counts, row subsets, padding trims, chunked scoring.

Pure PyTorch. Text batches carry an ``attention_mask`` (left or right padding); image batches don't, and
pass through the padding helpers unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import torch


def as_written(value: float) -> Fraction:
    """A setting as the decimal it prints as, exactly: ``ceil(as_written(1.1) * 50)`` is 55, where the float
    product 55.000000000000007 would give 56 (and ``21 / 1.4`` 15.000000000000002, so 16, not 15)."""
    return Fraction(str(value))


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


def chunked_logits(model: Callable[..., Any], batch: dict[str, Any], chunk_size: int,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of every row of ``batch`` (model inputs only), computed over :func:`length_sorted_chunks` and put
    back in row order; ``transform`` is applied to each chunk's logits right after its forward."""
    logits = None
    for index, chunk in length_sorted_chunks(batch, chunk_size):
        chunk_logits = logits_of(model(**chunk))
        if transform is not None:
            chunk_logits = transform(chunk_logits)
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

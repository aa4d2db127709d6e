"""Margin diagnostics: the geometry of a classifier's decision boundaries over a data set, as a JSON-able dict.

Pure PyTorch, for any loop (``diagnostics_callback.MarginDiagnosticsCallback`` runs it at each evaluation of a
``Trainer``). A sample's margin is its minimal margin score ``mms = (s[i1] - s[i2]) / ||W[i1] - W[i2]||``
(:func:`~.margins.minimal_margin_scores`): the distance of ``phi`` to the boundary between its two top classes
``i1, i2``. The R terms are those of :func:`~.margins.multi_margin_penalty`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .batching import as_written, logits_of
from .heads import ClassifierHead, find_classifier
from .margins import IGNORE_INDEX, _at_least_fp32, minimal_margin_scores, multi_margin_penalty
from .selection import lowest

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
EPSILONS = (0.01, 0.1, 1.0)
LOWEST_SHARE = 0.1

Gather = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def quantile_key(q: float) -> str:
    """The record's key of quantile ``q``: ``0.05`` → ``"q5"``."""
    return f"q{100 * q:g}"


def epsilon_key(epsilon: float) -> str:
    """The record's key of the share within ``epsilon`` of a boundary: ``0.1`` → ``"0.1"``."""
    return f"{epsilon:g}"


def check_diagnostics_options(epsilons: Iterable[float] = EPSILONS, quantiles: Iterable[float] = QUANTILES,
                              lowest_share: float = LOWEST_SHARE, return_margins: bool = False) -> None:
    """Refuse options :func:`margin_diagnostics` cannot use (an unknown name is a ``TypeError``), and two quantiles or
    epsilons that would share a key of the record (keys keep 6 significant digits)."""
    quantiles, epsilons = list(quantiles), list(epsilons)
    if not all(0 <= q <= 1 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1]; got {quantiles}.")
    if not all(e >= 0 for e in epsilons):
        raise ValueError(f"epsilons are distances to a boundary, so at least 0; got {epsilons}.")
    for name, values, key in (("quantiles", quantiles, quantile_key), ("epsilons", epsilons, epsilon_key)):
        keys = [key(v) for v in values]
        if len(set(keys)) < len(keys):
            raise ValueError(f"{name} {values} give the record keys {keys}, some twice: one value would hide "
                             "another; pass values that differ in their first 6 significant digits.")
    if not 0 < lowest_share <= 1:
        raise ValueError(f"lowest_share must lie in (0, 1]; got {lowest_share}.")


def margin_diagnostics(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    head: ClassifierHead | None = None,
    *,
    epsilons: Iterable[float] = EPSILONS,
    quantiles: Iterable[float] = QUANTILES,
    lowest_share: float = LOWEST_SHARE,
    return_margins: bool = False,
    gather: Gather | None = None,
) -> dict[str, Any]:
    """Margins, feature norms and R's terms of every sample of ``batches`` (model-input dicts, optionally with
    ``labels``), computed without gradients with ``model`` in eval mode (its mode restored). ``head`` defaults to
    :func:`~.heads.find_classifier`. ``gather`` (e.g. Accelerate's ``gather_for_metrics``) maps each batch's
    per-sample tensors (``logits``, ``feature_norm``, ``labels``) to those of all processes.

    Returns, for ``N`` samples and ``C`` classes (``q5`` = the 5% quantile, linearly interpolated):

    - ``num_samples``, ``num_classes``, ``margin_mean``, ``margin_quantiles`` ``{"q5": ..., "q50": ...}``;
    - ``within_epsilon`` ``{"0.1": share of samples with mms <= 0.1, ...}``;
    - ``mean_margin_by_predicted_class``: ``C`` means over the samples whose top class is ``c`` (``None``: none);
    - ``lowest_share`` and ``lowest_margin_pairs``: ``[{"top1", "top2", "count"}, ...]`` over the ``ceil(share·N)``
      smallest margins, most frequent first;
    - ``feature_norm_mean``, ``feature_norm_max`` and ``feature_norm_sq_max`` ``= max ||phi||²``, R's feature term;
    - with labels (rows not labelled ``IGNORE_INDEX``): ``num_labelled``, ``accuracy`` (top class = label),
      ``mean_margin_by_true_class`` and ``weight_gap_sq_mean`` ``= mean_n ||W[y_n] - W[m_n]||²``, R's weight term;
    - with ``return_margins``: ``margins``, every sample's margin in batch order.
    """
    epsilons, quantiles = list(epsilons), list(quantiles)
    check_diagnostics_options(epsilons, quantiles, lowest_share, return_margins)
    head = find_classifier(model) if head is None else head
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            samples, weight_gap_sum = _per_sample(model, batches, head, gather or (lambda part: part))
    finally:
        model.train(was_training)
    margins, top1, top2, labels, norms = (samples[key] for key in ("margins", "top1", "top2", "labels", "feature_norm"))
    num_samples, num_classes = len(margins), head.num_classes
    values = torch.quantile(margins, torch.tensor(quantiles, dtype=margins.dtype)).tolist()
    lowest_rows = lowest(margins, math.ceil(as_written(lowest_share) * num_samples))
    stats = {
        "num_samples": num_samples,
        "num_classes": num_classes,
        "margin_mean": margins.mean().item(),
        "margin_quantiles": {quantile_key(q): value for q, value in zip(quantiles, values)},
        "within_epsilon": {epsilon_key(e): (margins <= e).double().mean().item() for e in epsilons},
        "mean_margin_by_predicted_class": _class_means(margins, top1, num_classes),
        "lowest_share": lowest_share,
        "lowest_margin_pairs": _pair_counts(top1[lowest_rows], top2[lowest_rows]),
        "feature_norm_mean": norms.mean().item(),
        "feature_norm_max": norms.max().item(),
        "feature_norm_sq_max": norms.max().item() ** 2,
    }
    labelled = labels != IGNORE_INDEX
    num_labelled = int(labelled.sum())
    if num_labelled:
        stats |= {
            "num_labelled": num_labelled,
            "accuracy": (top1[labelled] == labels[labelled]).double().mean().item(),
            "mean_margin_by_true_class": _class_means(margins[labelled], labels[labelled], num_classes),
            "weight_gap_sq_mean": weight_gap_sum / num_labelled,
        }
    if return_margins:
        stats["margins"] = margins.tolist()
    return stats


def _per_sample(model: nn.Module, batches: Iterable[Mapping[str, Any]], head: ClassifierHead,
                gather: Gather) -> tuple[dict[str, torch.Tensor], float]:
    """Each sample's margin, top two classes, label (``IGNORE_INDEX`` if none) and ``||phi||`` (float64 or int64, on
    the CPU), and the sum over labelled samples of ``||W[y] - W[m]||²``."""
    columns, weight_gap_sum = defaultdict(list), 0.0
    for batch in batches:
        with head.capture() as captured:
            output = logits_of(model(**{key: value for key, value in batch.items() if key != "labels"}))
        logits = captured.precise_logits(output)
        weight = captured.weight  # taken inside the forward: the full weight of a sharded model too
        labels = batch.get("labels")
        part = gather({
            "logits": logits,
            "feature_norm": _at_least_fp32(captured.features_for(output)).norm(dim=1),
            "labels": torch.full((len(logits),), IGNORE_INDEX, device=logits.device) if labels is None
            else labels.to(logits.device),
        })
        logits, labels = part["logits"], part["labels"]
        num_labelled = int((labels != IGNORE_INDEX).sum())
        if num_labelled:  # R at unit features (max ||phi||² = 1) is the mean weight gap
            unit_feature = torch.zeros_like(weight[:1])
            unit_feature[0, 0] = 1.0
            gap = multi_margin_penalty(unit_feature.expand(len(logits), -1), logits, labels, weight)
            weight_gap_sum += gap.item() * num_labelled
        top = _at_least_fp32(logits).topk(2, dim=1).indices
        for key, value in (("margins", minimal_margin_scores(logits, weight).double()), ("top1", top[:, 0]),
                           ("top2", top[:, 1]), ("labels", labels.long()),
                           ("feature_norm", part["feature_norm"].double())):
            columns[key].append(value.cpu())
    if not columns:
        raise ValueError("margin_diagnostics got no samples: batches was empty.")
    return {key: torch.cat(values) for key, values in columns.items()}, weight_gap_sum


def _class_means(margins: torch.Tensor, classes: torch.Tensor, num_classes: int) -> list[float | None]:
    """The mean margin of each class's samples (``None`` for a class without samples)."""
    counts = torch.bincount(classes, minlength=num_classes)
    sums = torch.zeros(num_classes, dtype=margins.dtype).index_add_(0, classes, margins)
    return [(total / count) if count else None for total, count in zip(sums.tolist(), counts.tolist())]


def _pair_counts(top1: torch.Tensor, top2: torch.Tensor) -> list[dict[str, int]]:
    """How often each (top-1, top-2) class pair occurs, most frequent first (ties: by the pair)."""
    pairs, counts = torch.stack([top1, top2], dim=1).unique(dim=0, return_counts=True)
    found = [{"top1": a, "top2": b, "count": c} for (a, b), c in zip(pairs.tolist(), counts.tolist())]
    return sorted(found, key=lambda p: (-p["count"], p["top1"], p["top2"]))

"""Margins of a linear classifier ``s = W·phi + b`` (Weinstein 2020, §4 and §5.2).

Pure PyTorch: nothing here knows about ``Trainer``. Each formula of the thesis lives in exactly
one function of this module; everything else in the package calls it.

Shapes: ``logits`` is ``(N, C)``, ``weight`` is ``(C, D)``, ``features`` is ``(N, D)``,
``labels`` is ``(N,)`` with values in ``[0, C)``.
"""

from __future__ import annotations

import torch


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 when it is in a lower precision (bf16, fp16), unchanged in fp32 or fp64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _check_shapes(logits: torch.Tensor, weight: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, num_classes); got shape {tuple(logits.shape)}.")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (num_classes, feature_dim); got shape {tuple(weight.shape)}.")
    if logits.shape[1] != weight.shape[0]:
        raise ValueError(
            f"logits have {logits.shape[1]} classes but the classifier weight has {weight.shape[0]} rows "
            f"(logits {tuple(logits.shape)}, weight {tuple(weight.shape)}). Pass the weight of the last "
            "linear layer that produced these logits (shape num_classes x feature_dim)."
        )
    if logits.shape[1] < 2:
        raise ValueError(
            "margins need a classifier with at least 2 classes; got a single output (a regression head?)."
        )


def minimal_margin_scores(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Distance of each sample to the decision boundary between its two top classes (label-free).

    ``mms_n = (s[i1] - s[i2]) / ||W[i1] - W[i2]||`` where ``i1, i2`` are the highest and
    second-highest scoring classes of sample ``n``. Ties in the scores give 0.

    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> minimal_margin_scores(torch.tensor([[3.0, 1.0]]), w)
    tensor([1.4142])
    """
    _check_shapes(logits, weight)
    top = _at_least_fp32(logits).topk(2, dim=1)
    first, second = top.indices.unbind(dim=1)
    gap = top.values[:, 0] - top.values[:, 1]
    weight = _at_least_fp32(weight)
    norm = (weight[first] - weight[second]).norm(dim=1)
    return gap / norm.clamp_min(torch.finfo(norm.dtype).tiny)


IGNORE_INDEX = -100  # a label the loss skips (as torch's cross-entropy does); MMR skips those rows too


def check_class_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Refuse labels that are not one class index per sample: float or multi-hot labels (multi-label or
    regression targets) and indices outside ``[0, num_classes)`` other than ``IGNORE_INDEX``."""
    if labels.dtype.is_floating_point or labels.ndim != 1:
        raise ValueError(
            f"labels must be class indices, one integer per sample; got dtype {labels.dtype} and shape "
            f"{tuple(labels.shape)}. Float or multi-hot labels are regression or multi-label targets, which MMR and "
            "margin-based selection do not support: cast single-label targets to integers (e.g. "
            "dataset.cast_column('labels', ClassLabel(...)) or int labels), or train with mmr_alpha=0 and selection='none'."
        )
    bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        hint = (" A label of -1 marks a hidden test label (e.g. a GLUE test split): train on labelled data."
                if bool((bad == -1).any()) else "")
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}) (or {IGNORE_INDEX} for a sample the loss skips); "
            f"got {sorted(set(bad.tolist()))[:8]}.{hint}"
        )


def most_competitive_wrong_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``m_n = argmax_{j != y_n} s_j``; ties go to the lowest class index."""
    wrong = logits.detach().masked_fill(
        torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")
    )
    return wrong.argmax(dim=1)


def true_class_margins(logits: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Signed distance of each sample to the boundary between its label and its most competitive wrong class.

    ``(s[y_n] - s[m_n]) / ||W[y_n] - W[m_n]||``: positive when the sample is classified correctly, the larger the
    better learned. Rows labelled ``IGNORE_INDEX`` give NaN. Computed in fp32 or wider.

    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> true_class_margins(torch.tensor([[3.0, 1.0], [3.0, 1.0]]), w, torch.tensor([0, 1]))
    tensor([ 1.4142, -1.4142])
    """
    _check_shapes(logits, weight)
    check_class_labels(labels, logits.shape[1])
    kept = labels != IGNORE_INDEX
    safe = labels.where(kept, torch.zeros_like(labels))
    logits, weight = _at_least_fp32(logits), _at_least_fp32(weight)
    competitor = most_competitive_wrong_class(logits, safe)
    gap = logits.gather(1, safe[:, None])[:, 0] - logits.gather(1, competitor[:, None])[:, 0]
    norm = (weight[safe] - weight[competitor]).norm(dim=1)
    margins = gap / norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return margins.masked_fill(~kept, float("nan"))


def multi_margin_penalty(
    features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """The MMR regularizer of thesis eq. 8, as a batch mean (a differentiable scalar).

    ``R = mean_n ||W[y_n] - W[m_n]||² · max_i ||phi_i||²`` with ``m_n`` the most competitive wrong
    class of sample ``n``. ``phi_max`` is not detached; the bias does not enter. Computed in fp32 (the result
    is fp32 for bf16/fp16 inputs too). Rows labelled ``IGNORE_INDEX`` are left out of R, as the loss leaves
    them out of the cross-entropy.

    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> phi = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    >>> multi_margin_penalty(phi, phi @ w.T, torch.tensor([0, 1]), w)
    tensor(50.)
    """
    _check_shapes(logits, weight)
    if features.ndim != 2 or features.shape[0] != logits.shape[0] or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must be (batch, feature_dim) = ({logits.shape[0]}, {weight.shape[1]}); "
            f"got {tuple(features.shape)}."
        )
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},); got {tuple(labels.shape)}.")
    check_class_labels(labels, logits.shape[1])
    kept = labels != IGNORE_INDEX
    if not bool(kept.all()):
        features, logits, labels = features[kept], logits[kept], labels[kept]
        if labels.numel() == 0:
            return _at_least_fp32(weight).sum() * 0.0
    competitor = most_competitive_wrong_class(logits, labels)
    weight = _at_least_fp32(weight)  # bf16 would cost about 1e-3 of R
    weight_gap = (weight[labels] - weight[competitor]).pow(2).sum(dim=1)
    largest_feature_norm_sq = _at_least_fp32(features).pow(2).sum(dim=1).max()
    return (weight_gap * largest_feature_norm_sq).mean()

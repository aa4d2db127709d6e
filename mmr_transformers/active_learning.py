"""Pool-based active learning: which unlabelled samples to label next.

:func:`select_for_labeling` runs the model over an unlabelled pool (no gradients, eval mode, the previous mode
restored) and returns the indices of the ``num_samples`` samples a strategy prefers. A strategy maps the pool's
``logits`` ``(N, C)``, the classifier weight ``W`` ``(C, D)`` and, when it asks for them, the classifier's input
features ``phi`` ``(N, D)`` to a *priority* per sample; the lowest are labelled first. Adding one is one
registered function, as for the training-time strategies of :mod:`mmr_transformers.selection`::

    @register_query_strategy("smallest_top_score")
    def smallest_top_score(logits, weight, features, num_samples, generator):
        return logits.max(dim=1).values

Pure PyTorch: any map-style dataset of dicts works, through a ``DataLoader`` with the given collator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from .batching import logits_of
from .heads import check_classification_head, find_classifier
from .margins import minimal_margin_scores
from .selection import entropy_priority, random_priority

QueryFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", int, torch.Generator], torch.Tensor]

# mms_diverse clusters the DIVERSITY_CANDIDATES · num_samples samples of smallest margin
DIVERSITY_CANDIDATES = 4
KMEANS_ITERATIONS = 50


@dataclass(frozen=True)
class QueryStrategy:
    """A registered strategy: ``priority(logits, weight, features, num_samples, generator) -> (N,)``, lowest
    labelled first. ``features`` is ``None`` unless ``needs_features``."""

    name: str
    priority: QueryFn
    needs_features: bool


QUERY_STRATEGIES: dict[str, QueryStrategy] = {}


def register_query_strategy(name: str, needs_features: bool = False) -> Callable[[QueryFn], QueryFn]:
    """Register ``fn(logits, weight, features, num_samples, generator) -> priority[N]``; lowest is labelled first."""

    def register(fn: QueryFn) -> QueryFn:
        QUERY_STRATEGIES[name] = QueryStrategy(name, fn, needs_features)
        return fn

    return register


def get_query_strategy(name: str) -> QueryStrategy:
    try:
        return QUERY_STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown active-learning strategy {name!r}; choose one of {sorted(QUERY_STRATEGIES)}."
        ) from None


@register_query_strategy("mms")
def mms_query(logits, weight, features, num_samples, generator):
    """Geometric minimal margin ``(s[i1] - s[i2]) / ||W[i1] - W[i2]||``: closest to a decision boundary first."""
    return minimal_margin_scores(logits, weight)


@register_query_strategy("breaking_ties")
def breaking_ties_query(logits, weight, features, num_samples, generator):
    """Smallest gap between the two largest softmax probabilities first (Scheffer et al. 2001)."""
    top = logits.float().softmax(dim=1).topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@register_query_strategy("entropy")
def entropy_query(logits, weight, features, num_samples, generator):
    """Largest entropy of the softmax first."""
    return entropy_priority(logits, weight, None, generator)


@register_query_strategy("least_confidence")
def least_confidence_query(logits, weight, features, num_samples, generator):
    """Largest ``1 - max_j p_j`` first, i.e. the smallest top probability."""
    return logits.float().softmax(dim=1).max(dim=1).values


@register_query_strategy("random")
def random_query(logits, weight, features, num_samples, generator):
    """A uniformly random choice (seeded): the baseline every strategy must beat."""
    return random_priority(logits, weight, None, generator)


def spread_over_clusters(priority: torch.Tensor, features: torch.Tensor, num_samples: int,
                         generator: torch.Generator) -> torch.Tensor:
    """A batch-diverse version of ``priority`` (lowest first): the ``DIVERSITY_CANDIDATES · num_samples`` lowest are
    clustered into ``num_samples`` groups by their features ``phi`` (seeded k-means); the choice then takes, round by
    round, the lowest not yet chosen member of every cluster (within a round, lowest first). Samples outside the
    candidate set get priority ``inf``."""
    candidates = priority.argsort(stable=True)[: DIVERSITY_CANDIDATES * num_samples]
    clusters = kmeans(features[candidates].float().cpu(), num_samples, generator)
    # candidates are in priority order, so a candidate's rank in its cluster counts the earlier members of it
    rank_in_cluster = F.one_hot(clusters).cumsum(dim=0).gather(1, clusters[:, None])[:, 0] - 1
    order = candidates[rank_in_cluster.argsort(stable=True).to(candidates.device)]
    spread = torch.full_like(priority, float("inf"))
    spread[order] = torch.arange(len(order), dtype=spread.dtype, device=spread.device)
    return spread


@register_query_strategy("mms_diverse", needs_features=True)
def mms_diverse_query(logits, weight, features, num_samples, generator):
    """Minimal margin spread over the feature space (:func:`spread_over_clusters`), so near-duplicates are not all
    labelled at once."""
    return spread_over_clusters(minimal_margin_scores(logits, weight), features, num_samples, generator)


@register_query_strategy("breaking_ties_diverse", needs_features=True)
def breaking_ties_diverse_query(logits, weight, features, num_samples, generator):
    """Breaking ties spread over the feature space the same way: the control that tells the margin's share of
    ``mms_diverse``'s gain from the diversity step's."""
    return spread_over_clusters(breaking_ties_query(logits, weight, features, num_samples, generator), features,
                                num_samples, generator)


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster ids ``(N,)`` of Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), at most
    ``KMEANS_ITERATIONS`` updates. Fewer than ``k`` clusters when the points have fewer distinct positions.
    ``points`` and ``generator`` on the CPU."""
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centers = points[first : first + 1]
    nearest = (points - centers[0]).pow(2).sum(dim=1)
    while centers.shape[0] < k and bool(nearest.sum() > 0):
        chosen = int(torch.multinomial(nearest / nearest.sum(), 1, generator=generator))
        centers = torch.cat([centers, points[chosen : chosen + 1]])
        nearest = torch.minimum(nearest, (points - points[chosen]).pow(2).sum(dim=1))
    clusters = torch.cdist(points, centers).argmin(dim=1)
    for _ in range(KMEANS_ITERATIONS):
        counts = torch.bincount(clusters, minlength=centers.shape[0])
        sums = torch.zeros_like(centers).index_add_(0, clusters, points)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        updated = torch.cdist(points, centers).argmin(dim=1)
        if torch.equal(updated, clusters):
            break
        clusters = updated
    return clusters


def select_for_labeling(
    model: torch.nn.Module,
    unlabeled_dataset: Any,
    num_samples: int,
    strategy: str | QueryStrategy = "mms",
    *,
    collate_fn: Callable[[list], Any] | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    seed: int = 0,
    classifier_module: str | None = None,
) -> list[int]:
    """Indices into ``unlabeled_dataset`` of the ``num_samples`` samples to label next, most wanted first.

    ``unlabeled_dataset`` is a map-style dataset of dicts (a ``datasets.Dataset`` or any ``Dataset``) whose
    batches, made by ``collate_fn`` (e.g. ``DataCollatorWithPadding(tokenizer)``; default: torch's default
    collation), are the model's keyword inputs; a ``labels`` (or ``label``) entry is dropped before the forward.
    The pool is scored in batches of ``batch_size``, sent to ``device`` (default: the model's; the model must be
    there already), without gradients and in eval mode (the previous mode is restored). ``strategy`` names one of
    :data:`QUERY_STRATEGIES`; ``seed`` seeds the random ones (``random``, and the k-means of ``mms_diverse``).
    ``classifier_module`` names the last linear layer when discovery guesses wrong.
    """
    if not isinstance(strategy, QueryStrategy):
        strategy = get_query_strategy(strategy)
    if isinstance(unlabeled_dataset, IterableDataset) or not hasattr(unlabeled_dataset, "__len__"):
        raise ValueError(
            f"select_for_labeling needs a map-style dataset (with len() and indexing), since it returns positions in "
            f"it; got {type(unlabeled_dataset).__name__}. Materialise the pool first, e.g. datasets.Dataset.from_list "
            "or a list of dicts."
        )
    pool_size = len(unlabeled_dataset)
    if pool_size == 0:
        raise ValueError("the unlabelled pool is empty: there is nothing left to label. Pass a non-empty dataset.")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= pool_size:
        raise ValueError(
            f"num_samples={num_samples!r}: ask for an integer between 1 and the pool size ({pool_size})."
        )
    head = find_classifier(model, classifier_module)
    check_classification_head(model, head, "select_for_labeling")
    logits, features, weight = _score_pool(model, head, unlabeled_dataset, strategy.needs_features, collate_fn,
                                           batch_size, device)
    with torch.no_grad():
        priority = strategy.priority(logits, weight, features, num_samples, torch.Generator().manual_seed(seed))
    return priority.argsort(stable=True)[:num_samples].tolist()


def _score_pool(model, head, dataset, needs_features, collate_fn, batch_size, device):
    """The pool's logits ``(N, C)``, when asked the classifier's inputs ``(N, D)`` (else ``None``), in dataset order,
    and the classifier weight as the forward applied it (a sharded model's full weight)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    logits, features = [], []
    try:
        with torch.inference_mode(), head.capture() as captured:
            for batch in loader:
                inputs = _model_inputs(batch, device)
                output = logits_of(model(**inputs))
                logits.append(captured.precise_logits(output))
                if needs_features:
                    features.append(captured.features_for(output))
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(features) if needs_features else None, captured.weight


def _model_inputs(batch: Any, device: torch.device) -> dict[str, Any]:
    """A collated batch as the model's keyword inputs on ``device``, its labels left out."""
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"the pool's batches must be dicts of model inputs (a dataset of dicts); got a {type(batch).__name__}. "
            "Give the dataset dict rows such as {'input_ids': ..., 'attention_mask': ...}."
        )
    inputs = {}
    for key, value in batch.items():
        if key in ("labels", "label"):
            continue
        if isinstance(value, list):
            raise ValueError(
                f"the pool's batch entry {key!r} is a list, not a tensor (torch's default collation leaves per-row "
                "lists as lists). Pass collate_fn=DataCollatorWithPadding(tokenizer) (or another padding collator), or, "
                "for rows of equal length, dataset.set_format('torch')."
            )
        inputs[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return inputs

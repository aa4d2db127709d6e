"""Selection from cached scores: the margins of the training forward pass, kept per sample, choose the next pass.

Fresh selection (``MMRTrainer`` with ``selection_source="fresh"``) pays an inference pass over ``k·b``
candidates per step. Over several epochs the training forward already computes every trained sample's
score; :class:`CachedScoreBatchSampler` stores it per dataset index and plans each pass from the cache, so
selection costs nothing beyond bookkeeping. Scores are stale by up to the passes since a sample was last
seen, which is why a share of each pass is explored at random and unseen samples come first.

Pure PyTorch: a ``torch.utils.data.Sampler`` of index batches with a ``state_dict`` for checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from .batching import as_written


class ScoreCache(Sampler):
    """A batch sampler's per-sample score cache and the plan of its current pass, shared by the cached-score and the
    pruning samplers: ``update(indices, scores)`` writes fresh scores (NaN = never scored), ``consumed`` counts the
    plan's batches trained on, and ``state_dict``/``load_state_dict`` carry both through a checkpoint (a restored
    unfinished pass is replayed; the Trainer skips its trained batches)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0):
        if num_samples < 1:
            raise ValueError(f"the cached-score sampler needs a non-empty dataset; got {num_samples} samples.")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.scores = torch.full((num_samples,), float("nan"), dtype=torch.float64)  # NaN: never scored
        self.generator = torch.Generator().manual_seed(seed)
        self.plan: list[list] = []
        self.batches_consumed = 0  # of the current plan, counted by ``consumed``
        self._replay = False

    def update(self, indices: torch.Tensor, scores: torch.Tensor) -> None:
        """Cache ``scores[j]`` for sample ``indices[j]`` (negative indices, e.g. padding, are ignored)."""
        indices, scores = indices.detach().cpu().long(), scores.detach().cpu().double()
        valid = indices >= 0
        if not bool(scores[valid].isfinite().all()):
            raise FloatingPointError(
                f"non-finite scores {scores[valid][~scores[valid].isfinite()].tolist()[:4]} for samples "
                f"{indices[valid][~scores[valid].isfinite()].tolist()[:4]}: the model has diverged (NaN/inf weights or "
                "features). A NaN score would read as 'never scored'; lower the learning rate, clip gradients "
                "(max_grad_norm) and resume from the last checkpoint."
            )
        self.scores[indices[valid]] = scores[valid]

    def consumed(self, batches: int = 1) -> None:
        """Mark ``batches`` of the current plan as trained on (all processes together)."""
        self.batches_consumed += batches

    def coverage(self) -> float:
        """Share of the samples with a cached score."""
        return float((~self.scores.isnan()).double().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.clone(), "generator": self.generator.get_state(),
                "plan": [list(b) for b in self.plan], "batches_consumed": self.batches_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint; an unfinished pass is replayed (the Trainer skips its trained batches)."""
        if state["scores"].shape != self.scores.shape:
            raise ValueError(
                f"the checkpoint's sampler cached scores for {state['scores'].shape[0]} samples but the training set "
                f"has {self.num_samples}; resume with the same training data."
            )
        self.scores = state["scores"].clone()
        self.generator.set_state(state["generator"])
        self.plan = [list(b) for b in state["plan"]]
        self.batches_consumed = state["batches_consumed"]
        self._replay = bool(self.plan) and self.batches_consumed < len(self.plan)


class CachedScoreBatchSampler(ScoreCache):
    """Batches of the ``ceil(N/k)`` samples a pass trains on, chosen from cached priorities (lowest first).

    Each pass (one iteration over the sampler) keeps ``ceil(N / ratio)`` of the ``N`` samples:
    a share ``1 - exploration`` in priority order (never-scored samples first, then the lowest cached
    score; ties in random order), the rest uniformly at random from the remaining samples. The kept
    samples are shuffled into batches of ``batch_size``. ``update(indices, scores)`` writes fresh scores.

    The plan of a pass is fixed when the pass starts, from the cache and the sampler's own generator, so
    processes holding the same cache plan the same global batches, and a restored ``state_dict``
    replays the interrupted pass exactly.
    """

    def __init__(self, num_samples: int, batch_size: int, ratio: float, exploration: float = 0.1, seed: int = 0,
                 drop_last: bool = False):
        super().__init__(num_samples, batch_size, seed)
        if not ratio >= 1:
            raise ValueError(f"ratio must be >= 1 (a pass trains on 1/ratio of the samples); got {ratio}.")
        if not 0 <= exploration <= 1:
            raise ValueError(f"exploration must be in [0, 1] (the random share of each pass); got {exploration}.")
        self.ratio, self.exploration, self.drop_last = ratio, exploration, drop_last

    @property
    def samples_per_pass(self) -> int:
        return math.ceil(self.num_samples / as_written(self.ratio))

    def __len__(self) -> int:
        full, rest = divmod(self.samples_per_pass, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        if not self._replay:
            self.plan, self.batches_consumed = self._plan_pass(), 0
        self._replay = False
        for batch in self.plan:
            yield list(batch)  # a copy: Accelerate fills a short last batch in place

    def _plan_pass(self) -> list[list[int]]:
        n, keep = self.num_samples, self.samples_per_pass
        explore = round(self.exploration * keep)
        shuffled = torch.randperm(n, generator=self.generator)  # random order among equal priorities
        priority = self.scores[shuffled].nan_to_num(nan=float("-inf"))
        ranked = shuffled[priority.argsort(stable=True)]
        chosen, rest = ranked[: keep - explore], ranked[keep - explore:]
        explored = rest[torch.randperm(len(rest), generator=self.generator)[:explore]]
        chosen = torch.cat([chosen, explored])
        chosen = chosen[torch.randperm(len(chosen), generator=self.generator)].tolist()
        batches = [chosen[i: i + self.batch_size] for i in range(0, len(chosen), self.batch_size)]
        return batches[: len(self)]


class IndexedDataset(Dataset):
    """``dataset[i]`` (a dict) plus its index under ``key``, so a batch says which samples it holds. A sampler of
    ``(index, weight)`` pairs (:class:`~mmr_transformers.pruning.PruningBatchSampler`) adds the weight under
    ``weight_key``."""

    def __init__(self, dataset, key: str, weight_key: str | None = None):
        self.dataset, self.key, self.weight_key = dataset, key, weight_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int | tuple[int, float]) -> dict:
        i, weight = i if isinstance(i, tuple) else (i, None)
        item = self.dataset[i]
        if not isinstance(item, dict):
            raise TypeError(
                f"the cached-score sampler needs dataset items that are dicts (e.g. a datasets.Dataset or "
                f"{{'pixel_values', 'labels'}}); item {i} is a {type(item).__name__}."
            )
        return {**item, self.key: i} if weight is None else {**item, self.key: i, self.weight_key: weight}


class IndexedCollator:
    """Collate the items without their index (and weight), then add the indices (and weights) as tensors."""

    def __init__(self, collator, key: str, weight_key: str | None = None):
        self.collator, self.key, self.weight_key = collator, key, weight_key

    def __call__(self, features: list[dict]) -> dict:
        extra = {self.key: torch.tensor([f[self.key] for f in features], dtype=torch.long)}
        if self.weight_key in features[0]:
            extra[self.weight_key] = torch.tensor([f[self.weight_key] for f in features], dtype=torch.float64)
        batch = self.collator([{k: v for k, v in f.items() if k not in extra} for f in features])
        return {**batch, **extra}

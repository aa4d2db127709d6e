"""Unbiased dynamic pruning of well-learned samples, the InfoBatch way (Qin et al., ICLR 2024), with the learned-ness
read from the loss (InfoBatch's own rule) or from the true-class margin (this package's variant).

Each *round* (a pass over the kept samples) is planned from a per-sample cache of scores that the training forward
leaves behind (higher = better learned: ``-CE`` or the signed margin ``(s[y] - s[m]) / ||W[y] - W[m]||``). The
samples scoring above the mean of the cached scores are *well learned*; a random ``prune_ratio`` share of them sits
the round out, and the kept ones carry the weight ``|well| / |kept well|`` (about ``1 / (1 - prune_ratio)``) on
their loss, so the expected gradient of the round equals the full data's. Samples never scored yet are always kept;
once training has gone ``anneal`` of its way, rounds keep every sample unweighted (InfoBatch's annealing).

Rounds run back to back inside the trainer's epochs, which keep plain training's length (``ceil(N / b)`` batches),
so a run's step count and LR schedule are exactly as set; pruning saves the steps spent on well-learned samples.

Pure PyTorch: a ``torch.utils.data.Sampler`` of ``[(index, weight), ...]`` batches with a ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .margins import IGNORE_INDEX, true_class_margins
from .sampler import ScoreCache


def learned_score(kind: str, logits: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How well each sample is learned, higher better: ``-CE`` (``kind="loss"``) or the signed true-class margin
    (``kind="margin"``). Rows labelled ``IGNORE_INDEX`` give NaN (they are not cached).

    >>> w = torch.eye(2)
    >>> learned_score("margin", torch.tensor([[3.0, 1.0]]), w, torch.tensor([1]))
    tensor([-1.4142])
    """
    if kind == "margin":
        return true_class_margins(logits, weight, labels)
    if kind == "loss":
        loss = -F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=IGNORE_INDEX)
        return loss.masked_fill(labels == IGNORE_INDEX, float("nan"))
    raise ValueError(f"Unknown prune_score {kind!r}; choose 'loss' or 'margin'.")


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_n w_n · CE_n / #labelled rows``: the mean cross-entropy of a batch with each row's loss weighted
    (all weights 1 give the plain mean; rows labelled ``IGNORE_INDEX`` count for nothing).

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> bool(torch.isclose(weighted_cross_entropy(logits, torch.tensor([0, 0]), torch.ones(2)),
    ...                    F.cross_entropy(logits, torch.tensor([0, 0]))))
    True
    """
    losses = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=IGNORE_INDEX)
    labelled = (labels != IGNORE_INDEX).sum().clamp_min(1)
    return (losses * weights.to(losses.dtype)).sum() / labelled


class PruningBatchSampler(ScoreCache):
    """Batches of ``(dataset index, loss weight)`` pairs from back-to-back pruned rounds (see the module docstring).

    ``progress()`` returns the share of training done in ``[0, 1]`` (the trainer's ``global_step / max_steps``);
    rounds planned at ``progress() >= anneal`` keep everything. Every iteration (a trainer epoch) yields
    ``ceil(N / batch_size)`` full batches; a batch may end one round and start the next. The plan of a round is
    fixed when it starts, from the cache and the sampler's own generator, so processes holding the same cache plan
    the same batches, and a restored ``state_dict`` replays an interrupted epoch exactly.
    """

    def __init__(self, num_samples: int, batch_size: int, prune_ratio: float, anneal: float,
                 progress: Callable[[], float], seed: int = 0):
        super().__init__(num_samples, batch_size, seed)
        if not 0 < prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in (0, 1) (the share of well-learned samples left out of a round); "
                             f"got {prune_ratio}.")
        if not 0 <= anneal <= 1:
            raise ValueError(f"anneal must be in [0, 1] (the share of training after which nothing is pruned); got {anneal}.")
        self.prune_ratio, self.anneal, self.progress = prune_ratio, anneal, progress
        self.round: list[list] = []  # the current round's (index, weight) pairs not yet put into a batch
        self.last_pruned = 0  # samples the latest round left out

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        if not self._replay:
            self.plan, self.batches_consumed = [], 0
        self._replay = False
        for batch in list(self.plan):  # replayed: the trainer skips the batches it trained before the checkpoint
            yield [tuple(pair) for pair in batch]
        while len(self.plan) < len(self):
            batch = []
            while len(batch) < self.batch_size:
                if not self.round:
                    self.round = self._plan_round()
                take = self.batch_size - len(batch)
                batch, self.round = batch + self.round[:take], self.round[take:]
            self.plan.append(batch)
            yield [tuple(pair) for pair in batch]

    def _plan_round(self) -> list[list]:
        n = self.num_samples
        weights = torch.ones(n, dtype=torch.float64)
        kept = torch.ones(n, dtype=torch.bool)
        seen = ~self.scores.isnan()
        self.last_pruned = 0
        if self.progress() < self.anneal and bool(seen.any()):
            well = (seen & (self.scores > self.scores[seen].mean())).nonzero()[:, 0]
            well = well[torch.randperm(len(well), generator=self.generator)]
            stay = round((1 - self.prune_ratio) * len(well))
            if stay:
                kept[well[stay:]] = False
                weights[well[:stay]] = len(well) / stay
                self.last_pruned = len(well) - stay
        order = kept.nonzero()[:, 0]
        order = order[torch.randperm(len(order), generator=self.generator)]
        return [[int(i), float(weights[i])] for i in order]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round": [list(pair) for pair in self.round], "last_pruned": self.last_pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round = [list(pair) for pair in state["round"]]
        self.last_pruned = state["last_pruned"]

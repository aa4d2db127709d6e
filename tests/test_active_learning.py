"""Active learning: select_for_labeling chooses what a brute-force ranking of the pool chooses, spreads its
choice over near-duplicates, refuses bad input by message; scripts/run_active_learning.py runs, resumes and is
reported by benchmarks/active_learning_report.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from builders import REPO, rows, tiny_model, token_dataset
from mmr_transformers import QUERY_STRATEGIES, select_for_labeling
from reference import brute_force_mms, classifier_linear, independent_features

POOL = 40


def pool_logits_and_weight(model, dataset):
    """The pool's logits from features computed by hand (no hooks), in float64, and the classifier weight."""
    linear = classifier_linear(model)
    model.eval()
    with torch.no_grad():
        phi = independent_features(model, rows(dataset, 0, len(dataset))).double()
    weight, bias = linear.weight.detach().double(), linear.bias.detach().double()
    return (phi @ weight.T + bias).numpy(), weight.numpy()


def softmax_rows(logits):
    return [np.exp(row - row.max()) / np.exp(row - row.max()).sum() for row in logits]


def brute_force_priority(strategy, logits, weight):
    """Each strategy from its definition, row by row (lowest is labelled first)."""
    if strategy == "mms":
        return brute_force_mms(logits, weight)
    probabilities = softmax_rows(logits)
    if strategy == "breaking_ties":  # p(first) - p(second)
        return np.array([sorted(p)[-1] - sorted(p)[-2] for p in probabilities])
    if strategy == "entropy":  # largest -sum p log p first
        return np.array([sum(q * np.log(q) for q in p) for p in probabilities])
    if strategy == "least_confidence":  # largest 1 - max p first
        return np.array([-(1 - max(p)) for p in probabilities])
    raise AssertionError(strategy)


@pytest.mark.parametrize("strategy", ["mms", "breaking_ties", "entropy", "least_confidence"])
@pytest.mark.parametrize("num_samples", [1, 7, POOL])
def test_each_strategy_chooses_what_a_brute_force_ranking_of_the_pool_chooses(strategy, num_samples):
    model = tiny_model("bert", num_labels=5, seed=num_samples, initializer_range=0.5)  # logits of order 1
    raw = token_dataset(POOL, num_labels=5, seed=3, variable_length=True)
    priority = brute_force_priority(strategy, *pool_logits_and_weight(model, raw))
    assert np.diff(np.sort(priority)).min() > 1e-5  # no near-ties that fp32 could order either way
    expected = np.argsort(priority)
    pool = raw.map(lambda row: {"labels": 99}).with_format("torch")  # a label the loss refuses: kept from the forward
    model.train()
    chosen = select_for_labeling(model, pool, num_samples, strategy, batch_size=6)
    assert chosen == expected[:num_samples].tolist()  # most wanted first
    assert model.training  # the previous mode is restored
    model.eval()
    assert select_for_labeling(model, pool, num_samples, strategy, batch_size=POOL) == chosen and not model.training


def test_random_is_the_seeded_uniform_draw_and_differs_between_seeds():
    model = tiny_model("bert", num_labels=3)
    pool = token_dataset(POOL).with_format("torch")
    for seed in (0, 1):
        draws = torch.rand(POOL, generator=torch.Generator().manual_seed(seed)).numpy()
        assert select_for_labeling(model, pool, 5, "random", seed=seed) == np.argsort(draws)[:5].tolist()
    assert select_for_labeling(model, pool, 5, "random", seed=0) != select_for_labeling(model, pool, 5, "random", seed=1)


class FeatureClassifier(nn.Module):
    """A linear classifier over given features ``x`` (so the test controls phi): logits = x W^T + b."""

    def __init__(self, weight, bias):
        super().__init__()
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x):
        return self.head(x)


WEIGHT = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def blob(center, size, noise, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(center) + noise * torch.randn(size, 3, generator=g)


def margins_of(points):
    logits = points.double().numpy() @ WEIGHT.double().numpy().T
    return brute_force_mms(logits, WEIGHT.numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mms_diverse_takes_the_smallest_margin_of_each_near_duplicate_group(seed):
    # A: six near-duplicates right at the 0/1 boundary (the smallest margins); B: near-duplicates a little further
    # from the 1/2 boundary; C: far from every boundary. num_samples=2 makes 8 candidates: all of A, two of B.
    a, b, c = blob([1.0, 0.98, -5.0], 6, 1e-3, 1), blob([-5.0, 2.0, 1.9], 4, 1e-3, 2), blob([3.0, 0.0, 0.0], 10, 0.1, 3)
    points = torch.cat([a, b, c])
    margins = margins_of(points)
    assert margins[:6].max() < margins[6:10].min() and margins[6:10].max() < margins[10:].min()
    pool = [{"x": p} for p in points]
    model = FeatureClassifier(WEIGHT, torch.zeros(3))
    plain = select_for_labeling(model, pool, 2, "mms")
    assert set(plain) <= set(range(6))  # plain margin takes two near-duplicates of A
    expected = [int(np.argmin(margins[:6])), 6 + int(np.argmin(margins[6:10]))]
    assert select_for_labeling(model, pool, 2, "mms_diverse", seed=seed) == expected


def test_mms_diverse_goes_round_the_groups_when_it_wants_more_than_there_are_groups():
    # exact duplicates: two distinct positions among the 12 candidates of num_samples=3, so k-means finds two
    # clusters; round 0 takes the first of each (A's margin is smaller), round 1 the next of A (ties: lowest index)
    a, b, c = blob([1.0, 0.98, -5.0], 8, 0.0, 0), blob([-5.0, 2.0, 1.9], 5, 0.0, 0), blob([3.0, 0.0, 0.0], 10, 0.1, 3)
    model = FeatureClassifier(WEIGHT, torch.zeros(3))
    assert select_for_labeling(model, [{"x": p} for p in torch.cat([a, b, c])], 3, "mms_diverse") == [0, 8, 1]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from ({"x": torch.zeros(3)} for _ in range(4))


@pytest.mark.parametrize("case, message", [
    ("regression", "regression head"),
    ("empty", "pool is empty"),
    ("zero", r"num_samples=0: ask for an integer between 1 and the pool size \(40\)"),
    ("too many", r"num_samples=41: ask for an integer between 1 and the pool size \(40\)"),
    ("unknown", r"Unknown active-learning strategy 'margin'; choose one of \['breaking_ties', 'entropy', "
                r"'least_confidence', 'mms', 'mms_diverse', 'random'"),
    ("lists", "entry 'input_ids' is a list, not a tensor.*DataCollatorWithPadding"),
    ("stream", "needs a map-style dataset"),
    ("tuples", "batches must be dicts of model inputs"),
])
def test_bad_input_is_refused_with_a_message_that_says_what_to_do(case, message):
    model = tiny_model("bert", num_labels=1 if case == "regression" else 3)
    pool = token_dataset(POOL).with_format("torch")
    pool = {"empty": pool.select([]), "lists": token_dataset(POOL), "stream": Stream(),
            "tuples": torch.utils.data.TensorDataset(torch.zeros(POOL, 3))}.get(case, pool)
    num_samples = {"zero": 0, "too many": POOL + 1}.get(case, 2)
    with pytest.raises(ValueError, match=message):
        select_for_labeling(model, pool, num_samples, "margin" if case == "unknown" else "mms")


def test_the_registry_is_the_strategy_list_and_the_module_needs_no_transformers():
    assert sorted(QUERY_STRATEGIES) == ["breaking_ties", "entropy", "least_confidence", "mms", "mms_diverse", "random"]
    code = "import sys, mmr_transformers.active_learning; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.stdout.strip() == "False", result.stderr[-2000:]

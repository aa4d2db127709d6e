"""Selection strategies keep exactly the rows a brute-force ranking says they must."""

import numpy as np
import pytest
import torch

from mmr_transformers.selection import (
    SELECTION_STRATEGIES,
    get_selection_strategy,
    num_to_keep,
    register_selection_strategy,
    select_candidates,
)
from builders import make_args, tiny_model
from mmr_transformers import CachedScoreBatchSampler, MMRTrainer
from reference import brute_force_selection_priority


def candidates(seed=0, n=32, classes=4, dim=6):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=g)
    logits = torch.randn(n, dim, generator=g) @ weight.T
    labels = torch.randint(0, classes, (n,), generator=g)
    return logits, weight, labels


@pytest.mark.parametrize("strategy", ["mms", "loss", "entropy"])
@pytest.mark.parametrize("num_keep", [1, 8, 31])
def test_keeps_the_lowest_priority_rows(strategy, num_keep):
    logits, weight, labels = candidates(seed=num_keep)
    keep = select_candidates(strategy, logits, weight, num_keep, labels)
    priority = brute_force_selection_priority(strategy, logits, weight, labels.tolist())
    expected = sorted(np.argsort(priority)[:num_keep].tolist())
    assert keep.tolist() == expected


def test_random_selection_is_a_seeded_uniform_subset():
    logits, weight, _ = candidates()
    pick = lambda seed: select_candidates("random", logits, weight, 8, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(pick(1), pick(1))
    assert not torch.equal(pick(1), pick(2))
    counts = torch.zeros(32)
    for seed in range(400):
        counts[pick(seed)] += 1
    assert counts.min() > 60 and counts.max() < 140  # expectation 100 per row


def test_loss_strategy_without_labels_says_how_to_fix_it():
    logits, weight, _ = candidates()
    with pytest.raises(ValueError, match="selection='loss' ranks candidates by their labels.*selection='mms'"):
        select_candidates("loss", logits, weight, 4, labels=None)


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown selection strategy 'smallest'; choose one of \['entropy', 'loss', 'mms', 'random'"):
        get_selection_strategy("smallest")


def test_a_new_strategy_is_one_registered_function():
    @register_selection_strategy("lowest_true_class_score", needs_labels=True)
    def lowest_true_class_score(logits, weight, labels, generator):
        return logits.gather(1, labels[:, None])[:, 0]

    try:
        logits, weight, labels = candidates()
        keep = select_candidates("lowest_true_class_score", logits, weight, 5, labels)
        true_scores = [logits[n, y].item() for n, y in enumerate(labels.tolist())]
        assert keep.tolist() == sorted(np.argsort(true_scores)[:5].tolist())
    finally:
        SELECTION_STRATEGIES.pop("lowest_true_class_score")


@pytest.mark.parametrize("n, ratio, b, expected", [(32, 4, 8, 8), (12, 4, 8, 3), (1, 4, 8, 1), (20, 2.5, 8, 8), (8, 1, 8, 8)])
def test_num_to_keep(n, ratio, b, expected):
    assert num_to_keep(n, ratio, b) == expected


@pytest.mark.parametrize("ratio, tenths", [(1.1, 11), (1.4, 14), (2.2, 22), (3.3, 33), (4.0, 40)])
def test_counts_from_a_ratio_are_ceilings_of_the_decimal_as_written(ratio, tenths, tmp_path):
    """ceil(k·b) candidates, ceil(n/k) kept, ceil(N/k) per cached pass: computed from k as written (11/10 for
    1.1), where float arithmetic gives 1.1·50 = 55.000000000000007 and 21/1.4 = 15.000000000000002."""
    def ceil_div(a, b):  # the exact integer ceiling of a / b
        return -(-a // b)

    for batch_size in (10, 25, 50, 90):
        args = make_args(str(tmp_path), selection="mms", selection_ratio=ratio, per_device_train_batch_size=batch_size)
        trainer = MMRTrainer(model=tiny_model("bert"), args=args)
        assert trainer.candidate_batch_size() == ceil_div(tenths * batch_size, 10)
    for n in range(1, 300):
        assert num_to_keep(n, ratio, 10**6) == ceil_div(10 * n, tenths)
        assert CachedScoreBatchSampler(n, 8, ratio).samples_per_pass == ceil_div(10 * n, tenths)

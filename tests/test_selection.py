"""Selection strategies keep exactly the rows a brute-force ranking says they must."""

import math

import numpy as np
import pytest
import torch

from mmr_transformers.selection import (
    SELECTION_STRATEGIES,
    get_selection_strategy,
    num_to_keep,
    register_selection_strategy,
    select_candidates,
    length_sorted_chunks,
    take_rows,
    trim_padding,
)


def candidates(seed=0, n=32, classes=4, dim=6):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=g)
    logits = torch.randn(n, dim, generator=g) @ weight.T
    labels = torch.randint(0, classes, (n,), generator=g)
    return logits, weight, labels


def brute_force_priority(strategy, logits, weight, labels):
    logits, weight = logits.double().numpy(), weight.double().numpy()
    out = []
    for n, row in enumerate(logits):
        order = np.argsort(-row)
        if strategy == "mms":
            i, j = order[:2]
            out.append((row[i] - row[j]) / np.linalg.norm(weight[i] - weight[j]))
        elif strategy == "loss":  # keep the largest cross-entropy
            out.append(-(math.log(np.exp(row - row.max()).sum()) + row.max() - row[labels[n]]))
        elif strategy == "entropy":  # keep the largest entropy
            p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            out.append(float((p * np.log(p)).sum()))
    return np.array(out)


@pytest.mark.parametrize("strategy", ["mms", "loss", "entropy"])
@pytest.mark.parametrize("num_keep", [1, 8, 31])
def test_keeps_the_lowest_priority_rows(strategy, num_keep):
    logits, weight, labels = candidates(seed=num_keep)
    keep = select_candidates(strategy, logits, weight, num_keep, labels)
    expected = sorted(np.argsort(brute_force_priority(strategy, logits, weight, labels.tolist()))[:num_keep].tolist())
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


def test_take_rows_slices_tensors_and_lists_and_keeps_the_rest():
    batch = {"input_ids": torch.arange(12).view(4, 3), "labels": torch.tensor([0, 1, 0, 1]), "ids": ["a", "b", "c", "d"],
             "scale": torch.tensor(2.0)}
    out = take_rows(batch, torch.tensor([1, 3]))
    assert out["input_ids"].tolist() == [[3, 4, 5], [9, 10, 11]]
    assert out["labels"].tolist() == [1, 1] and out["ids"] == ["b", "d"] and out["scale"] == 2.0


@pytest.mark.parametrize("side", ["right", "left"])
def test_trim_padding_drops_only_columns_that_are_padding_in_every_row(side):
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    if side == "left":
        mask = mask.flip(1)
    ids = torch.arange(12).view(2, 6) * mask
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}
    out = trim_padding(batch)
    kept = slice(0, 3) if side == "right" else slice(3, 6)
    assert torch.equal(out["input_ids"], ids[:, kept]) and torch.equal(out["attention_mask"], mask[:, kept])
    assert torch.equal(out["labels"], batch["labels"])
    full = {"input_ids": ids[:1, :3], "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    assert trim_padding(full) is full


def test_length_sorted_chunks_cover_every_row_once_in_trimmed_chunks_of_similar_length():
    lengths = torch.tensor([5, 1, 8, 3, 8, 2, 6])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    batch = {"input_ids": torch.arange(7)[:, None] * mask, "attention_mask": mask, "labels": torch.arange(7)}
    chunks = list(length_sorted_chunks(batch, 3))
    assert [len(index) for index, _ in chunks] == [3, 3, 1]
    assert sorted(torch.cat([index for index, _ in chunks]).tolist()) == list(range(7))
    for index, chunk in chunks:
        assert chunk["attention_mask"].shape[1] == int(lengths[index].max())
        assert torch.equal(chunk["labels"], index)
    assert [sorted(lengths[index].tolist()) for index, _ in chunks] == [[1, 2, 3], [5, 6, 8], [8]]

"""Batch plumbing: row subsets, padding trims, length-sorted scoring chunks."""

import pytest
import torch

from mmr_transformers.batching import length_sorted_chunks, take_rows, trim_padding


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

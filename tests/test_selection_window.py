"""Selective Backprop's loss-percentile draw against its exact probabilities, and the selection window
(start, end, interrupt) against the steps it must score."""

import itertools

import pytest
import torch

from builders import RecordingTrainer, make_args, tiny_model, token_dataset
from mmr_transformers import MMRTrainingArguments
from mmr_transformers.selection import select_candidates


def exact_inclusion(weights, num_keep):
    """P(row i is drawn) when ``num_keep`` rows are drawn one after another without replacement, each with
    probability proportional to its weight among those left: every ordered draw enumerated."""
    total = [0.0] * len(weights)
    for order in itertools.permutations(range(len(weights)), num_keep):
        p, left = 1.0, sum(weights)
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        for i in order:
            total[i] += p
    return total


@pytest.mark.parametrize("num_keep", [1, 2])
def test_selective_backprop_draws_rows_with_their_loss_percentile_as_weight(num_keep):
    logits = torch.tensor([[0.0, 3.0], [1.0, 1.2], [2.0, 0.0], [0.5, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])  # losses: largest for row 0, then 3, 1, 2
    percentile = {2: 0.5 / 4, 1: 1.5 / 4, 3: 2.5 / 4, 0: 3.5 / 4}  # (rank + 1/2) / N, rank by ascending loss
    expected = exact_inclusion([percentile[i] for i in range(4)], num_keep)
    draws = 8000
    counts = torch.zeros(4)
    for seed in range(draws):
        counts[select_candidates("selective_backprop", logits, torch.eye(2), num_keep, labels,
                                 torch.Generator().manual_seed(seed))] += 1
    assert (counts / draws - torch.tensor(expected)).abs().max() < 0.02  # the std of each share is below 0.006


@pytest.mark.parametrize("window, scored_steps", [
    (dict(selection_start=0.5), [4, 5, 6, 7]),
    (dict(selection_start=0.25, selection_end=0.75), [2, 3, 4, 5]),
    (dict(selection_interrupt=2), [0, 2, 4, 6]),
    (dict(selection_start=0.5, selection_interrupt=3), [4, 6, 7]),
])
def test_only_steps_inside_the_window_and_not_interrupted_score_the_others_train_a_random_b(output_dir, window,
                                                                                              scored_steps):
    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=2, max_steps=8, **window)
    trainer = RecordingTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(64))
    trainer.train()
    assert [s["step"] for s in trainer.selections] == scored_steps
    assert [len(rows) for rows in trainer.trained] == [4] * 8  # every step trains b rows
    scored = sum(h.get("mmr/samples_scored", 0) for h in trainer.state.log_history)
    assert scored == 8 * len(scored_steps)  # k·b = 8 candidates scored on each selecting step only
    assert sum(h.get("mmr/samples_trained", 0) for h in trainer.state.log_history) == 32


def test_a_window_outside_zero_to_one_or_without_fresh_selection_is_refused(output_dir):
    with pytest.raises(ValueError, match=r"needs 0 <= selection_start < selection_end <= 1"):
        MMRTrainingArguments(output_dir=output_dir, selection="mms", selection_start=0.9, selection_end=0.5)
    with pytest.raises(ValueError, match="selection_start set the fresh scoring pass, which runs only with"):
        MMRTrainingArguments(output_dir=output_dir, selection="mms", selection_source="cached", selection_start=0.5)

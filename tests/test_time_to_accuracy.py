"""The equal-compute benchmark's protocol pieces: time to target, the budget clock and its LR schedule."""

import importlib.util
import math
import os
import sys

import pytest
import torch

from conftest import tiny_model, token_dataset
from mmr_transformers import MMRTrainer
from test_trainer import make_args

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def tta():
    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location("time_to_accuracy", os.path.join(BENCHMARKS, "time_to_accuracy.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["time_to_accuracy"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_time_to_target_is_the_first_budget_reaching_it_interpolated_in_log_budget(tta):
    points = [(320, 0.87), (80, 0.80), (160, 0.84)]
    result = tta.time_to_target(points, 0.85)
    assert result["grid"] == 320 and result["censored"] is None
    share = (0.85 - 0.84) / (0.87 - 0.84)
    assert result["interpolated"] == pytest.approx(160 * 2 ** share)
    assert tta.time_to_target(points, 0.79) == {"grid": 80, "interpolated": 80, "censored": "below"}
    assert tta.time_to_target(points, 0.90) == {"grid": None, "interpolated": None, "censored": "above"}


def test_the_learning_rate_warms_up_then_reaches_zero_exactly_at_the_budget(tta):
    factor = lambda f: tta.budget_lr_factor(f, warmup=0.1)  # noqa: E731
    assert [factor(0), factor(0.05), factor(0.1), factor(0.55), factor(1.0)] == pytest.approx([0, 0.5, 1, 0.5, 0])


def test_training_stops_when_the_budget_is_spent_and_the_rate_follows_the_clock(tta, output_dir):
    model = tiny_model("bert")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = tta.BudgetClock(budget_seconds=1.0)
    args = make_args(output_dir, max_steps=10**6, mmr_alpha=0.0, logging_steps=1)
    trainer = MMRTrainer(model=model, args=args, train_dataset=token_dataset(64), callbacks=[clock],
                         optimizers=(optimizer, tta.budget_scheduler(optimizer, clock, warmup=0.0)))
    trainer.train()
    steps = trainer.state.global_step
    assert 1 < steps < 10**6 and clock.elapsed() >= 1.0
    assert clock.elapsed() - 1.0 < 3 * clock.elapsed() / steps  # stopped within a few steps of the budget
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1 * 1e-3 and not math.isclose(rates[0], rates[-1])

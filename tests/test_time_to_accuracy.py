"""The equal-compute benchmark's protocol pieces: time to target, the budget clock and its LR schedule."""

import argparse
import importlib.util
import json
import math
import os
import sys

import pytest
import torch

from builders import make_args, tiny_model, token_dataset
from mmr_transformers import MMRTrainer

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


def test_report_pairs_seeds_and_bounds_an_arm_that_never_reaches_the_target(tta, tmp_path, capsys):
    runs = {("random", 0): {80: 0.80, 160: 0.86}, ("random", 1): {80: 0.82, 160: 0.87},
            ("mms", 0): {80: 0.84, 160: 0.88}, ("mms", 1): {80: 0.81, 160: 0.84}}  # mms seed 1 never reaches 0.85
    os.makedirs(tmp_path / "sst2")
    for (arm, seed), accuracies in runs.items():
        for budget, accuracy in accuracies.items():
            with open(tmp_path / "sst2" / f"{arm}-budget{budget}-seed{seed}.json", "w") as f:
                json.dump({"arm": arm, "seed": seed, "budget_seconds": budget, "accuracy": accuracy,
                           "step_seconds": 0.5 if arm == "random" else 0.75}, f)
    tta.report(argparse.Namespace(workload="sst2", results=str(tmp_path)))
    target = json.load(open(tmp_path / "sst2-summary.json"))["arms"]["mms"]["targets"]["0.85"]

    def interpolated(low, high, budget=80):  # log-linear between 80 s and 160 s
        return budget * 2 ** ((0.85 - low) / (high - low))

    random_times = [interpolated(0.80, 0.86), interpolated(0.82, 0.87)]
    mms_seed0 = interpolated(0.84, 0.88)
    assert target["ratio_to_random"]["n"] == 1
    assert target["ratio_to_random"]["median"] == pytest.approx(mms_seed0 / random_times[0])
    assert target["ratio_above_for_seeds_not_reaching"] == [pytest.approx(160 / random_times[1])]
    assert f"1 not reached: > {160 / random_times[1]:.2f}" in capsys.readouterr().out


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

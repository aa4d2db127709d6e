"""EvalTimeline: dev metrics against steps and against training seconds, evaluation and checkpoint time left out."""

import json
import os
import time

import pytest
from transformers import TrainerControl, TrainerState

from builders import make_args, tiny_model, token_dataset
from mmr_transformers import MMRTrainer, diagnostics_callback
from mmr_transformers.recipes.callbacks import EvalTimeline


class FakeClock:
    """Seconds that move only when the test moves them."""

    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


class Hooks:
    """Calls an EvalTimeline's hooks in the order the Trainer calls them, at times the test chooses."""

    def __init__(self, timeline, clock, output_dir, is_world_process_zero=True):
        self.timeline, self.clock = timeline, clock
        self.args = make_args(output_dir)
        self.state, self.control = TrainerState(), TrainerControl()
        self.state.is_world_process_zero = is_world_process_zero

    def __call__(self, hook, at, **kwargs):
        self.clock.now = at
        getattr(self.timeline, hook)(self.args, self.state, self.control, **kwargs)

    def step(self, at):
        self.state.global_step += 1
        self("on_step_end", at)


def test_train_seconds_leave_out_evaluation_and_checkpoint_time(output_dir):
    clock = FakeClock()
    timeline = EvalTimeline(clock=clock)
    hooks = Hooks(timeline, clock, output_dir)
    hooks("on_train_begin", 100.0)
    hooks.step(103.0)
    hooks.step(105.0)
    hooks("on_evaluate", 112.0, metrics={"eval_loss": 0.75})  # evaluated from 105 to 112: not training
    hooks.step(114.0)
    hooks("on_save", 120.0)  # a checkpoint from 114 to 120: not training
    hooks.step(121.0)
    hooks("on_evaluate", 130.0, metrics={"eval_loss": 0.5, "eval_accuracy": 0.25})  # 121 to 130: not training
    hooks("on_train_end", 131.0)
    # training: 100-105, 112-114, 120-121
    expected = [{"step": 2, "train_seconds": 5.0, "eval_loss": 0.75},
                {"step": 4, "train_seconds": 8.0, "eval_loss": 0.5, "eval_accuracy": 0.25}]
    assert timeline.points == expected
    with open(os.path.join(output_dir, "eval_timeline.json")) as f:
        assert json.load(f) == expected


def test_evaluations_outside_training_are_not_points_and_a_new_run_starts_afresh(output_dir):
    clock = FakeClock()
    timeline = EvalTimeline(clock=clock)
    hooks = Hooks(timeline, clock, output_dir)
    hooks("on_evaluate", 1.0, metrics={"eval_loss": 9.0})  # before training: ignored
    hooks("on_save", 2.0)
    hooks("on_train_begin", 10.0)
    hooks.step(14.0)
    hooks("on_evaluate", 15.0, metrics={"eval_loss": 1.0})
    hooks("on_train_end", 16.0)
    hooks("on_evaluate", 30.0, metrics={"eval_loss": 2.0})  # the script's final evaluation: after training
    assert timeline.points == [{"step": 1, "train_seconds": 4.0, "eval_loss": 1.0}]
    hooks("on_train_begin", 50.0)  # a second train() of the same trainer
    hooks.step(51.5)
    hooks("on_evaluate", 60.0, metrics={"eval_loss": 0.5})
    assert timeline.points == [{"step": 2, "train_seconds": 1.5, "eval_loss": 0.5}]


def test_only_the_main_process_writes_the_timeline(output_dir):
    clock = FakeClock()
    hooks = Hooks(EvalTimeline(clock=clock), clock, output_dir, is_world_process_zero=False)
    hooks("on_train_begin", 0.0)
    hooks.step(1.0)
    hooks("on_evaluate", 2.0, metrics={"eval_loss": 1.0})
    hooks("on_train_end", 3.0)
    assert not os.path.exists(os.path.join(output_dir, "eval_timeline.json"))


class SlowCheckpoints(MMRTrainer):
    """Each checkpoint takes SAVE_SECONDS on the clock."""

    SAVE_SECONDS = 500.0

    def __init__(self, *args, clock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.clock.offset += self.SAVE_SECONDS


class ShiftedClock:
    """The real clock plus seconds the test adds, to make evaluation and checkpoints slow without waiting."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.perf_counter() + self.offset


def test_a_real_run_records_each_evaluation_with_growing_training_seconds(output_dir):
    clock = ShiftedClock()
    eval_seconds = 1000.0

    def slow_metrics(prediction):
        clock.offset += eval_seconds  # inside evaluate(), as a slow metric would be
        return {"accuracy": float((prediction.predictions.argmax(1) == prediction.label_ids).mean())}

    timeline = EvalTimeline(clock=clock)
    args = make_args(output_dir, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=3)
    started = clock()
    trainer = SlowCheckpoints(model=tiny_model("bert"), args=args, train_dataset=token_dataset(32),
                              eval_dataset=token_dataset(16, seed=1), compute_metrics=slow_metrics,
                              callbacks=[timeline], clock=clock)
    trainer.train()
    wall = clock() - started
    points = timeline.points
    assert [p["step"] for p in points] == [2, 4, 6]
    seconds = [p["train_seconds"] for p in points]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    assert wall > 3 * eval_seconds + 2 * SlowCheckpoints.SAVE_SECONDS  # the run did take that long on the clock
    assert seconds[2] < wall - 3 * eval_seconds - 2 * SlowCheckpoints.SAVE_SECONDS  # and none of it is training
    evaluations = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [p["eval_loss"] for p in points] == [h["eval_loss"] for h in evaluations]
    assert [p["eval_accuracy"] for p in points] == [h["eval_accuracy"] for h in evaluations]
    with open(os.path.join(output_dir, "eval_timeline.json")) as f:
        assert json.load(f) == points


def test_the_margin_diagnostics_pass_counts_as_evaluation_not_training(output_dir, monkeypatch):
    clock, diagnostics_seconds = ShiftedClock(), 1000.0
    measure = diagnostics_callback.margin_diagnostics

    def slow_diagnostics(*args, **kwargs):
        clock.offset += diagnostics_seconds
        return measure(*args, **kwargs)

    monkeypatch.setattr(diagnostics_callback, "margin_diagnostics", slow_diagnostics)
    timeline = EvalTimeline(clock=clock)
    args = make_args(output_dir, max_steps=6, eval_strategy="steps", eval_steps=2, margin_diagnostics=True)
    started = clock()
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(32),
                         eval_dataset=token_dataset(16, seed=1), callbacks=[timeline])
    trainer.train()
    wall = clock() - started
    assert [p["step"] for p in timeline.points] == [2, 4, 6] and wall > 3 * diagnostics_seconds
    assert timeline.points[2]["train_seconds"] < wall - 3 * diagnostics_seconds


def test_a_resumed_run_continues_the_timeline_of_its_checkpoint(tmp_path):
    data = token_dataset(64)
    common = dict(max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, mmr_alpha=0.0)
    full = MMRTrainer(model=tiny_model("bert"), args=make_args(str(tmp_path / "full"), **common), train_dataset=data,
                      eval_dataset=data.select(range(8)), callbacks=[EvalTimeline()])
    full.train()
    original = json.load(open(tmp_path / "full" / "eval_timeline.json"))
    timeline = EvalTimeline()
    resumed = MMRTrainer(model=tiny_model("bert"), args=make_args(str(tmp_path / "resumed"), **common), train_dataset=data,
                         eval_dataset=data.select(range(8)), callbacks=[timeline])
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    points = json.load(open(tmp_path / "resumed" / "eval_timeline.json"))
    assert [p["step"] for p in points] == [2, 4, 6]
    assert points[:2] == original[:2]  # the checkpoint's history, unchanged
    assert points[2]["train_seconds"] > points[1]["train_seconds"]  # the clock continued, it did not restart
    assert points[2]["eval_loss"] == pytest.approx(original[2]["eval_loss"], rel=1e-5)

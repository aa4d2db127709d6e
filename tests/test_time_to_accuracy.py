"""The benchmarks' shared protocol pieces: the resumable runner (one JSON per run, existing runs skipped) as
``time_to_accuracy.py`` and ``study.py`` use it, time to target, the budget clock and its LR schedule."""

import argparse
import contextlib
import json
import math
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import torch
from transformers import TrainerCallback

from builders import REPO, load_script, make_args, tiny_model, token_dataset
from mmr_transformers import MMRTrainer
from mmr_transformers.recipes import runner

sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # where the benchmarks find ``common``, as ``python benchmarks/x.py`` does
import common  # noqa: E402  (the module the benchmarks import)

tta = load_script("time_to_accuracy", "benchmarks")  # registered in sys.modules: its dataclasses look their module up
study = load_script("study", "benchmarks")


def test_time_to_target_is_the_first_budget_reaching_it_interpolated_in_log_budget():
    points = [(320, 0.87), (80, 0.80), (160, 0.84)]
    result = common.time_to_target(points, 0.85)
    assert result["grid"] == 320 and result["censored"] is None
    share = (0.85 - 0.84) / (0.87 - 0.84)
    assert result["interpolated"] == pytest.approx(160 * 2 ** share)
    assert common.time_to_target(points, 0.79) == {"grid": 80, "interpolated": 80, "censored": "below"}
    assert common.time_to_target(points, 0.90) == {"grid": None, "interpolated": None, "censored": "above"}
    from_start = common.time_to_target([(0, 0.5), (100, 0.9)], 0.8)  # an evaluation at step 0: linear from there
    assert from_start == {"grid": 100, "interpolated": pytest.approx(75), "censored": None}


def test_the_benchmarks_share_one_runner_one_time_to_target_and_one_accuracy():
    assert tta.time_to_target is common.time_to_target and tta.run_resumable is common.run_resumable
    assert study.run_resumable is common.run_resumable and tta.unpack_cifar_jpegs is common.unpack_cifar_jpegs
    assert tta.accuracy is runner.accuracy and not hasattr(tta.Workload, "accuracy")


def test_the_resumable_runner_skips_existing_results_and_writes_one_json_per_run(tmp_path):
    (tmp_path / "b.json").write_text('{"kept": true}')
    called = []

    def make(name, record):
        def make_record():
            called.append(name)
            assert sorted(os.listdir(tmp_path)) == sorted(["b.json", *(f"{n}.json" for n in called[:-1] if n != "d")])
            return record
        return make_record

    plan = [(name, make(name, None if name == "d" else {"run": name})) for name in ("a", "b", "c", "d")]
    written = common.run_resumable(str(tmp_path), plan)
    assert called == ["a", "c", "d"] and written == ["a", "c"]  # b existed; d was discarded (None)
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json", "c.json"]
    assert json.load(open(tmp_path / "a.json")) == {"run": "a"} and json.load(open(tmp_path / "b.json")) == {"kept": True}
    assert common.run_resumable(str(tmp_path), [(n, make(n, {"run": n})) for n in ("a", "b", "c")]) == []
    assert called == ["a", "c", "d"]  # a second pass over a finished study runs nothing
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):  # a run that fails
        # while its record is written leaves no file that reads as done
        common.run_resumable(str(tmp_path), [("e", lambda: {"run": "e", "unwritable": object()})])
    assert not (tmp_path / "e.json").exists()


def test_time_to_accuracy_retries_a_busy_run_and_records_only_quiet_ones(tmp_path, monkeypatch):
    loads = {("mms", 0): [0.5, 0.01], ("random", 0): [0.01], ("mms", 1): [0.5, 0.5], ("random", 1): [0.01]}
    runs = []

    def run_one(workload, arm, budget, seed, data):
        runs.append((arm, seed))
        assert data == "data"
        return {"arm": arm, "seed": seed, "accuracy": 0.8, "steps": 10, "step_seconds": 0.1,
                "cpu_load_by_others": loads[(arm, seed)].pop(0)}

    class Workload:
        name = "sst2"

        def data(self):
            return "data"

    monkeypatch.setitem(tta.WORKLOADS, "sst2", Workload())
    monkeypatch.setattr(tta, "run_one", run_one)
    monkeypatch.setattr(tta, "exclusive_cpu", contextlib.nullcontext)
    monkeypatch.setattr(tta, "require_quiet_machine", lambda force: 0.0)
    monkeypatch.setattr(tta, "busy_fraction", lambda: 0.0)
    monkeypatch.setattr(tta, "host_probe_seconds", lambda: 1.0)
    os.makedirs(tmp_path / "sst2")
    (tmp_path / "sst2" / "random-budget80-seed1.json").write_text("{}")
    tta.run(argparse.Namespace(workload="sst2", results=str(tmp_path), budgets=[80.0], seeds=[0, 1],
                               arms=["random", "mms"], attempts=2, force=False))
    assert runs == [("random", 0), ("mms", 0), ("mms", 0), ("mms", 1), ("mms", 1)]  # seed 1's random existed
    assert sorted(os.listdir(tmp_path / "sst2")) == ["mms-budget80-seed0.json", "random-budget80-seed0.json",
                                                      "random-budget80-seed1.json"]  # mms seed 1 stayed busy
    record = json.load(open(tmp_path / "sst2" / "mms-budget80-seed0.json"))
    assert record["cpu_load_by_others"] == 0.01 and record["device"] and "wall_seconds" in record
    assert abs(datetime.fromisoformat(record["started_at"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_a_run_on_a_slow_host_is_rerun_against_the_fastest_probe_on_record(tmp_path, monkeypatch, capsys):
    probes = [9.0, 1.1, 1.6,  # after a warm-up probe (not read), 1.1 passes (1.1x the stored 1.0), but 1.6 at the end
              9.0, 2.0, 2.0, 1.19, 1.15]  # then waits while 2.0x slow (two checks), runs from 1.19, ends at 1.15: kept
    slept = []
    monkeypatch.setattr(tta, "host_probe_seconds", lambda: probes.pop(0))
    monkeypatch.setattr(tta, "busy_fraction", lambda: 0.0)
    monkeypatch.setattr(tta.time, "sleep", slept.append)
    monkeypatch.setattr(tta, "exclusive_cpu", contextlib.nullcontext)
    monkeypatch.setattr(tta, "run_one", lambda *a: {"accuracy": 0.8, "steps": 10, "step_seconds": 0.1,
                                                     "cpu_load_by_others": 0.01})
    os.makedirs(tmp_path / "sst2")
    stored = {"random-budget80-seed0": {"host_probe": {**tta.HOST_PROBE, "seconds": [1.0, 1.3]}},
              "random-budget80-seed1": {"host_probe": {**tta.HOST_PROBE, "size": 64, "seconds": [0.1, 0.1]}}}
    for name, record in stored.items():  # a probe of another size is not compared
        (tmp_path / "sst2" / f"{name}.json").write_text(json.dumps(record))
    args = argparse.Namespace(results=str(tmp_path), attempts=2, force=False)
    record = tta.quiet_run(args, tta.WORKLOADS["sst2"], "mms", 80.0, 0, None, "abc")
    assert "DISCARDED (machine busy or host slow)" in capsys.readouterr().out and slept == [10, 10]
    assert record["host_probe"]["seconds"] == [1.19, 1.15] and record["host_slowdown"] == 1.19
    assert tta.fastest_probe(str(tmp_path / "sst2")) == 1.0 and tta.fastest_probe(str(tmp_path / "none")) is None


def test_a_study_runs_each_planned_script_once_and_skips_what_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("MMR_MINILM_DIR", str(tmp_path / "minilm"))  # plan() only names the encoder
    calls = []

    def run_script(study_name, name, task, arm, script, flags, work_dir):
        calls.append((name, script))
        return {"run": name, "task": task, "arm": arm, "flags": flags}

    monkeypatch.setattr(study, "run_script", run_script)
    results = tmp_path / "results"
    os.makedirs(results / "mmr-sweep")
    (results / "mmr-sweep" / "rte-baseline-seed1.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["study.py", "mmr-sweep", "--only", "rte", "--results", str(results)])
    study.main()
    expected = [f"rte-{arm}-seed{seed}" for arm in ("baseline", "mmr1e-5", "mmr1e-3") for seed in (1, 2, 3)]
    assert calls == [(name, "run_glue.py") for name in expected[1:]]
    assert sorted(os.listdir(results / "mmr-sweep")) == sorted(f"{name}.json" for name in expected)
    record = json.load(open(results / "mmr-sweep" / "rte-mmr1e-3-seed2.json"))
    assert record["arm"] == "mmr1e-3" and record["flags"][record["flags"].index("--seed") + 1] == "2"


def test_a_study_run_records_its_own_files_not_an_earlier_attempts(tmp_path, monkeypatch):
    out = tmp_path / "mmr-full" / "rte-alpha0-seed0"
    os.makedirs(out)
    (out / "margin_diagnostics.json").write_text("[{\"step\": 99}]")  # left by an attempt with other flags
    commands = []

    def script(command, **kwargs):  # what run_glue.py writes, without --margin_diagnostics
        commands.append(command)
        assert os.listdir(out) == ["run.log"]
        (out / "all_results.json").write_text('{"eval_accuracy": 0.5}')
        (out / "eval_timeline.json").write_text("[]")
        (out / "trainer_state.json").write_text('{"log_history": []}')

    monkeypatch.setattr(study.subprocess, "run", script)
    record = study.run_script("mmr-full", "rte-alpha0-seed0", "rte", "alpha0", "run_glue.py", ["--seed", "0"],
                              str(tmp_path))
    assert "margin_diagnostics" not in record and record["results"] == {"eval_accuracy": 0.5}
    assert commands[0][-4:] == ["--output_dir", str(out), "--seed", "0"]


def write_sst2_runs(directory, runs: dict, step_seconds: dict):
    """One run JSON per (arm, seed) and budget, as ``run`` writes them: ``runs[(arm, seed)] = {budget: accuracy}``."""
    os.makedirs(directory / "sst2")
    for (arm, seed), accuracies in runs.items():
        for budget, accuracy in accuracies.items():
            with open(directory / "sst2" / f"{arm}-budget{budget}-seed{seed}.json", "w") as f:
                json.dump({"arm": arm, "settings": tta.ARMS[arm], "seed": seed, "budget_seconds": budget,
                           "accuracy": accuracy, "step_seconds": step_seconds[arm],
                           "steps": round(budget / step_seconds[arm])}, f)


def test_report_pairs_seeds_bounds_an_arm_that_never_reaches_the_target_and_scores_given_targets(tmp_path, capsys):
    runs = {("random", 0): {80: 0.80, 160: 0.86}, ("random", 1): {80: 0.82, 160: 0.87},
            ("mms", 0): {80: 0.84, 160: 0.88}, ("mms", 1): {80: 0.81, 160: 0.84}}  # mms seed 1 never reaches 0.85
    write_sst2_runs(tmp_path, runs, step_seconds={"random": 0.5, "mms": 0.75})
    tta.report(argparse.Namespace(workload="sst2", results=str(tmp_path), targets=None))
    target = json.load(open(tmp_path / "sst2-summary.json"))["arms"]["mms"]["targets"]["0.85"]

    def interpolated(low, high, target=0.85):  # log-linear between 80 s and 160 s
        return 80 * 2 ** ((target - low) / (high - low))

    random_times = [interpolated(0.80, 0.86), interpolated(0.82, 0.87)]
    mms_seed0 = interpolated(0.84, 0.88)
    assert target["ratio_to_random"]["n"] == 1
    assert target["ratio_to_random"]["median"] == pytest.approx(mms_seed0 / random_times[0])
    assert target["ratio_above_for_seeds_not_reaching"] == [pytest.approx(160 / random_times[1])]
    assert f"1 not reached: > {160 / random_times[1]:.2f}" in capsys.readouterr().out

    # targets written down earlier (e.g. a previous round's) are scored instead, in a report of their own
    tta.report(argparse.Namespace(workload="sst2", results=str(tmp_path), targets=[0.83]))
    given = json.load(open(tmp_path / "sst2-at-0.83-summary.json"))
    assert given["targets"] == [0.83] and given["targets_from"] == "given"
    scored = given["arms"]["mms"]["targets"]["0.83"]
    assert scored["ratio_to_random"]["n"] == 1  # seed 1; seed 0 is there at 80 s, so only bounded: 80 s / random's time
    assert scored["ratio_to_random"]["median"] == pytest.approx(interpolated(0.81, 0.84, 0.83) / interpolated(0.82, 0.87, 0.83))
    assert scored["ratio_below_for_seeds_there_at_the_first_budget"] == [pytest.approx(80 / interpolated(0.80, 0.86, 0.83))]
    assert f"1 there at the first budget: < {80 / interpolated(0.80, 0.86, 0.83):.2f}" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "sst2-at-0.83.png")
    assert json.load(open(tmp_path / "sst2-summary.json"))["targets"] == [0.85, 0.88]  # the default report is kept


def test_report_bounds_seeds_where_random_was_at_the_target_by_its_first_budget_or_never(tmp_path, capsys):
    # target 0.85 (given): random is there at 80 s in seeds 0-2, so its time is only known to be <= 80 s;
    # in seed 3 it never gets there, so its time is only known to be > 160 s
    runs = {("random", 0): {80: 0.86, 160: 0.88}, ("random", 1): {80: 0.85, 160: 0.87},
            ("random", 2): {80: 0.90, 160: 0.91}, ("random", 3): {80: 0.80, 160: 0.84},
            ("mms", 0): {80: 0.80, 160: 0.86},  # there later: its ratio is at least its time / 80 s
            ("mms", 1): {80: 0.80, 160: 0.84},  # never there: its ratio is above 160 s / 80 s
            ("mms", 2): {80: 0.88, 160: 0.90},  # both there at 80 s: no ratio either way
            ("mms", 3): {80: 0.82, 160: 0.86}}  # there, random not: its ratio is below its time / 160 s
    write_sst2_runs(tmp_path, runs, step_seconds={"random": 0.5, "mms": 0.5})
    tta.report(argparse.Namespace(workload="sst2", results=str(tmp_path), targets=[0.85]))
    target = json.load(open(tmp_path / "sst2-at-0.85-summary.json"))["arms"]["mms"]["targets"]["0.85"]
    later = 80 * 2 ** ((0.85 - 0.80) / (0.86 - 0.80)) / 80  # log-linear between 80 s and 160 s, over random's 80 s
    assert target["ratio_to_random"] is None
    assert target["ratio_above_for_seeds_random_there_at_its_first_budget"] == [pytest.approx(later)]
    assert target["ratio_above_for_seeds_not_reaching"] == [pytest.approx(160 / 80)]
    assert target["ratio_below_for_seeds_there_at_the_first_budget"] == []
    assert target["seeds_both_there_at_the_first_budget"] == 1
    only_mms = 80 * 2 ** ((0.85 - 0.82) / (0.86 - 0.82)) / 160
    assert target["ratio_below_for_seeds_random_not_reaching"] == [pytest.approx(only_mms)]
    out = capsys.readouterr().out
    assert f"1 random there at its first budget: > {later:.2f}" in out
    assert "1 not reached: > 2.00" in out and "1 both there at the first budget: no ratio" in out
    assert f"1 random not there: < {only_mms:.2f}" in out


def test_points_at_equal_steps_compare_with_randoms_accuracy_interpolated_in_log_steps(tmp_path, capsys):
    # random (0.1 s a step): 1000 steps -> 0.50, 2000 -> 0.60; so 0.10 per doubling of the steps
    runs = {("random", 0): {100: 0.50, 200: 0.60},
            ("mms", 0): {141.42: 0.58},  # 1414 steps at 0.1 s: half a doubling past 1000, random 0.55 -> +3 points
            ("selective-backprop", 0): {70: 0.40,  # 700 steps: further below random's 1000 than 1.25x, so not compared
                        237.84: 0.615},  # 2378 steps: a quarter doubling past 2000, random 0.625 (extrapolated) -> -1
            ("prune-margin", 0): {100: 0.52}}  # short of 0.55 at 100 s, 200 s not run yet: no bound on its time
    write_sst2_runs(tmp_path, runs, step_seconds={"random": 0.1, "mms": 0.1, "selective-backprop": 0.1, "prune-margin": 0.1})
    tta.report(argparse.Namespace(workload="sst2", results=str(tmp_path), targets=[0.55]))
    arms = json.load(open(tmp_path / "sst2-at-0.55-summary.json"))["arms"]
    half, quarter = math.log(1414 / 1000) / math.log(2), math.log(2378 / 2000) / math.log(2)  # 0.5 and 0.25, rounded steps
    assert arms["mms"]["points_at_equal_steps"]["141.42"]["median"] == pytest.approx(100 * (0.58 - 0.50 - 0.10 * half))
    assert arms["selective-backprop"]["points_at_equal_steps"]["237.84"]["median"] == pytest.approx(100 * (0.615 - 0.60 - 0.10 * quarter))
    assert arms["selective-backprop"]["points_at_equal_steps"]["70"] is None
    assert arms["random"]["points_at_equal_steps"]["100"] == {"median": 0.0, "min": 0.0, "max": 0.0, "n": 1}
    assert arms["prune-margin"]["targets"]["0.55"]["ratio_above_for_seeds_not_reaching"] == []
    assert "| mms |" in (out := capsys.readouterr().out) and "+3.00 [+3.00, +3.00] (n=1)" in out


def test_the_learning_rate_warms_up_then_reaches_zero_exactly_at_the_budget():
    factor = lambda f: tta.budget_lr_factor(f, warmup=0.1)  # noqa: E731
    assert [factor(0), factor(0.05), factor(0.1), factor(0.55), factor(1.0)] == pytest.approx([0, 0.5, 1, 0.5, 0])


def test_training_stops_when_the_budget_is_spent_and_the_rate_follows_the_clock(output_dir):
    now = [100.0]

    class Tick(TrainerCallback):  # every optimizer step takes 1/32 s on the fake clock (runs before the budget's)
        def on_step_end(self, args, state, control, **kwargs):
            now[0] += 1 / 32

    model = tiny_model("bert")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = tta.BudgetClock(budget_seconds=1.0, clock=lambda: now[0])
    args = make_args(output_dir, max_steps=10**6, mmr_alpha=0.0, logging_steps=1)
    trainer = MMRTrainer(model=model, args=args, train_dataset=token_dataset(64), callbacks=[Tick(), clock],
                         optimizers=(optimizer, tta.budget_scheduler(optimizer, clock, warmup=0.0)))
    trainer.train()
    assert trainer.state.global_step == 32 and clock.elapsed() == 1.0  # stopped at the step that spent the budget
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    # the rate step s trains with was set by the scheduler in step s - 1, at (s - 2)/32 of the budget (steps 1
    # and 2: the start's)
    assert rates == pytest.approx([1e-3] + [1e-3 * (1 - i / 32) for i in range(31)])
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1 * 1e-3 and not math.isclose(rates[0], rates[-1])
    assert tta.BudgetClock(1.0).clock is time.perf_counter  # real runs read the wall clock


def test_targets_from_randoms_curve_are_its_medians_at_a_quarter_of_the_largest_budget_and_at_it():
    random_arm = {0: {b: {"accuracy": a} for b, a in ((100, 0.50), (200, 0.70), (400, 0.80), (800, 0.90))},
                  1: {b: {"accuracy": a} for b, a in ((100, 0.60), (200, 0.72), (400, 0.82), (800, 0.86))},
                  2: {b: {"accuracy": a} for b, a in ((100, 0.40), (200, 0.74), (400, 0.84), (800, 0.88))}}
    assert tta.random_targets(random_arm) == (0.72, 0.88)  # 800 / 4 = 200 s; medians over the three seeds
    random_arm[1][800]["accuracy"], random_arm[2][800]["accuracy"] = 2053 / 3080, 0.60  # median 0.666558...:
    assert tta.random_targets(random_arm) == (0.6665, 0.72)  # rounding would give 0.6666, which the median seed misses
    with pytest.raises(SystemExit, match="run the random arm first"):
        tta.random_targets({})


def test_every_arm_is_a_valid_setting_and_the_window_and_annealing_follow_the_budget(output_dir):
    for arm in tta.ARMS:
        for workload in tta.WORKLOADS.values():
            make_args(output_dir, mmr_alpha=0.0, **tta.arm_settings(workload, arm))  # refused settings would raise
    now = [0.0]
    clock = tta.BudgetClock(budget_seconds=10.0, clock=lambda: now[0])
    args = make_args(output_dir, mmr_alpha=0.0, **tta.ARMS["selective-backprop"])
    trainer = tta.BudgetTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(16), clock=clock)
    clock.on_train_begin(None, None, None)
    assert not trainer._selecting_now()  # SelectiveBackprop starts at half the budget
    now[0] = 6.0
    assert trainer.training_progress() == 0.6 and trainer._selecting_now()


@pytest.mark.parametrize("settings", [tta.ARMS["mms"], tta.ARMS["selective-backprop"], tta.ARMS["mms-interleaved"],
                                      tta.ARMS["prune-margin"], {"selection": "mms", "selection_ratio": 4, "selection_end": 0.5}])
def test_the_ideal_step_cost_is_the_mean_step_of_a_simulated_budget_spent_by_the_window_and_interrupt(settings):
    inference_ratio, budget = 0.25, 100_000.0
    scoring_step = 1 + settings.get("selection_ratio", 0) * inference_ratio
    spent, steps = 0.0, 0
    while spent < budget:  # the trainer's rule: score inside [start, end) of the budget unless the step is interrupted
        every = settings.get("selection_interrupt", 0)
        inside = settings.get("selection_start", 0.0) <= spent / budget < settings.get("selection_end", 1.0)
        scores = "prune_score" not in settings and inside and not (every and (steps + 1) % every == 0)
        spent += scoring_step if scores else 1.0
        steps += 1
    assert tta.ideal_step_cost(settings, inference_ratio) == pytest.approx(spent / steps, rel=1e-3)

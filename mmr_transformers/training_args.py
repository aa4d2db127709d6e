"""``MMRTrainingArguments``: the MMR and selection settings as ``TrainingArguments`` fields.

Being dataclass fields, they come out of ``HfArgumentParser`` as ``--mmr_alpha`` / ``--mmr-alpha`` etc.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from .schedules import ALPHA_SCHEDULES
from .selection import SELECTION_STRATEGIES


@dataclass
class MMRTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus Multi-Margin Regularization and Minimal-Margin-Score selection."""

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
            "choices": sorted(ALPHA_SCHEDULES),
        },
    )
    # --- Selective sampling: score k·b candidates without gradients, train on the b chosen ---
    selection: str = field(
        default="none",
        metadata={
            "help": "Which b of the k·b candidates each step trains on: 'none' (plain training), 'mms' (smallest "
            "minimal margin score), 'loss' (largest cross-entropy, needs labels), 'entropy' (most uncertain), "
            "'random' (a random subset of the scored candidates).",
            "choices": ["none", *sorted(SELECTION_STRATEGIES)],
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
    selection_scoring_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per scoring forward pass (default: per_device_train_batch_size). Candidates are scored in "
            "chunks of similar length, each trimmed of its padding."
        },
    )
    classifier_module: str | None = field(
        default=None,
        metadata={
            "help": "Name of the last linear layer (e.g. 'classifier.out_proj'); found automatically when unset."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        validate_mmr_settings(self)


MMR_FIELDS = (
    "mmr_alpha", "mmr_alpha_end", "mmr_alpha_schedule",
    "selection", "selection_ratio", "selection_scoring_batch_size", "classifier_module",
)
_DEFAULTS = {f.name: f.default for f in fields(MMRTrainingArguments) if f.name in MMR_FIELDS}


def mmr_setting(args: TrainingArguments | None, name: str):
    """An MMR field of ``args``, or its ``MMRTrainingArguments`` default when ``args`` is plain ``TrainingArguments``
    (or ``None``)."""
    return getattr(args, name, _DEFAULTS[name])


def validate_mmr_settings(args: TrainingArguments | None) -> None:
    """Check the MMR fields once, with messages that say how to fix them."""
    alpha = mmr_setting(args, "mmr_alpha")
    if alpha < 0:
        raise ValueError(f"mmr_alpha must be >= 0 (0 turns MMR off); got {alpha}.")
    end = mmr_setting(args, "mmr_alpha_end")
    if end is not None and end < 0:
        raise ValueError(f"mmr_alpha_end must be >= 0; got {end}.")
    schedule = mmr_setting(args, "mmr_alpha_schedule")
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"Unknown mmr_alpha_schedule {schedule!r}; choose one of {sorted(ALPHA_SCHEDULES)}.")
    selection = mmr_setting(args, "selection")
    if selection != "none" and selection not in SELECTION_STRATEGIES:
        raise ValueError(
            f"Unknown selection {selection!r}; choose one of {['none', *sorted(SELECTION_STRATEGIES)]}."
        )
    ratio = mmr_setting(args, "selection_ratio")
    if not ratio >= 1:
        raise ValueError(
            f"selection_ratio must be >= 1: it is the candidate multiplier k (each step scores k·b samples and "
            f"trains on b of them); got {ratio}. Use selection_ratio=1 (or selection='none') for plain training."
        )
    scoring_batch_size = mmr_setting(args, "selection_scoring_batch_size")
    if scoring_batch_size is not None and scoring_batch_size < 1:
        raise ValueError(f"selection_scoring_batch_size must be >= 1 (or unset for the train batch size); got {scoring_batch_size}.")

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
        default=None, metadata={"help": "Score text candidates on their first N tokens only (default: all)."}
    )
    selection_scoring_image_scale: float | None = field(
        default=None,
        metadata={"help": "Score image candidates resized by this factor in (0, 1], e.g. 0.5 for half resolution."},
    )
    selection_agreement_steps: int = field(
        default=0,
        metadata={"help": "Every N optimizer steps also score the candidates with the full model and log the "
                          "Spearman rank agreement of the cheap scores as 'mms_rank_agreement' (0: never)."},
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
    "selection", "selection_ratio", "selection_scoring_batch_size", "selection_source", "selection_exploration",
    "selection_scorer", "selection_scorer_refresh_steps", "selection_scoring_max_length",
    "selection_scoring_image_scale", "selection_agreement_steps", "classifier_module",
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
    source = mmr_setting(args, "selection_source")
    if source not in ("fresh", "cached"):
        raise ValueError(f"Unknown selection_source {source!r}; choose 'fresh' or 'cached'.")
    if source == "cached" and selection == "none":
        raise ValueError("selection_source='cached' needs a selection strategy to score samples with; "
                         "set selection='mms' (or 'loss', 'entropy').")
    exploration = mmr_setting(args, "selection_exploration")
    if not 0 <= exploration <= 1:
        raise ValueError(f"selection_exploration must be in [0, 1]; got {exploration}.")
    scorer = mmr_setting(args, "selection_scorer")
    if scorer not in ("model", "int8"):
        raise ValueError(f"Unknown selection_scorer {scorer!r}; choose 'model' or 'int8'.")
    if mmr_setting(args, "selection_scorer_refresh_steps") < 1:
        raise ValueError(f"selection_scorer_refresh_steps must be >= 1; got {mmr_setting(args, 'selection_scorer_refresh_steps')}.")
    max_length = mmr_setting(args, "selection_scoring_max_length")
    if max_length is not None and max_length < 1:
        raise ValueError(f"selection_scoring_max_length must be >= 1 (or unset for full inputs); got {max_length}.")
    scale = mmr_setting(args, "selection_scoring_image_scale")
    if scale is not None and not 0 < scale <= 1:
        raise ValueError(f"selection_scoring_image_scale must be in (0, 1] (0.5 = half resolution); got {scale}.")
    if mmr_setting(args, "selection_agreement_steps") < 0:
        raise ValueError(f"selection_agreement_steps must be >= 0 (0: never); got {mmr_setting(args, 'selection_agreement_steps')}.")
    cheap = [name for name, default in (("selection_scorer", "model"), ("selection_scoring_max_length", None),
                                        ("selection_scoring_image_scale", None), ("selection_agreement_steps", 0))
             if mmr_setting(args, name) != default]
    if cheap and (selection == "none" or source == "cached"):
        raise ValueError(f"{', '.join(cheap)} set the fresh scoring pass, which runs only with selection != 'none' and "
                         f"selection_source='fresh' (got selection={selection!r}, selection_source={source!r}).")

"""Multi-Margin Regularization and Minimal-Margin-Score selection for Hugging Face Transformers.

The core (margins, selection, schedules, heads, batching, scoring, the cached-score sampler, pruning, margin
diagnostics, active learning, the settings) is plain PyTorch and imports without ``transformers``. The Hugging
Face adapter (``MMRTrainer``, ``MMRTrainingArguments``, ``MarginDiagnosticsCallback``) is imported on first use of
its name, so ``import mmr_transformers.margins``
stays light. Recipes for the example scripts live in :mod:`mmr_transformers.recipes`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .active_learning import QUERY_STRATEGIES, register_query_strategy, select_for_labeling
from .batching import take_rows, trim_padding
from .heads import ClassifierHead, FeatureCapture, find_classifier
from .margins import minimal_margin_scores, most_competitive_wrong_class, multi_margin_penalty
from .sampler import CachedScoreBatchSampler
from .schedules import ALPHA_SCHEDULES, alpha_at, register_alpha_schedule
from .scoring import Int8Scorer, quantized_scorer, rank_agreement, shorten_for_scoring
from .selection import SELECTION_STRATEGIES, Selection, register_selection_strategy, select_candidates, select_rows
from .settings import MMRSettings

if TYPE_CHECKING:
    from .trainer import MMRTrainer
    from .training_args import MMRTrainingArguments

__version__ = "0.1.0"

_ADAPTER = {"MMRTrainer": ".trainer", "MMRTrainingArguments": ".training_args",
            "MarginDiagnosticsCallback": ".diagnostics_callback"}


def __getattr__(name: str):
    """Import the Hugging Face adapter (and with it ``transformers``) when one of its names is first used."""
    if name in _ADAPTER:
        value = getattr(importlib.import_module(_ADAPTER[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALPHA_SCHEDULES",
    "QUERY_STRATEGIES",
    "SELECTION_STRATEGIES",
    "CachedScoreBatchSampler",
    "ClassifierHead",
    "FeatureCapture",
    "Int8Scorer",
    "MMRSettings",
    "MMRTrainer",
    "MMRTrainingArguments",
    "MarginDiagnosticsCallback",
    "Selection",
    "alpha_at",
    "find_classifier",
    "minimal_margin_scores",
    "most_competitive_wrong_class",
    "multi_margin_penalty",
    "quantized_scorer",
    "rank_agreement",
    "register_alpha_schedule",
    "register_query_strategy",
    "register_selection_strategy",
    "select_candidates",
    "select_for_labeling",
    "select_rows",
    "shorten_for_scoring",
    "take_rows",
    "trim_padding",
]

"""Multi-Margin Regularization and Minimal-Margin-Score selection for Hugging Face Transformers."""

from .heads import ClassifierHead, FeatureCapture, find_classifier
from .margins import minimal_margin_scores, most_competitive_wrong_class, multi_margin_penalty
from .schedules import ALPHA_SCHEDULES, alpha_at
from .sampler import CachedScoreBatchSampler
from .scoring import quantized_scorer, rank_agreement, shorten_for_scoring
from .selection import SELECTION_STRATEGIES, register_selection_strategy, select_candidates
from .trainer import MMRTrainer
from .training_args import MMRTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "ALPHA_SCHEDULES",
    "SELECTION_STRATEGIES",
    "CachedScoreBatchSampler",
    "ClassifierHead",
    "FeatureCapture",
    "MMRTrainer",
    "MMRTrainingArguments",
    "alpha_at",
    "find_classifier",
    "minimal_margin_scores",
    "most_competitive_wrong_class",
    "multi_margin_penalty",
    "quantized_scorer",
    "rank_agreement",
    "register_selection_strategy",
    "select_candidates",
    "shorten_for_scoring",
]

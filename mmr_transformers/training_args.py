"""``MMRTrainingArguments``: ``TrainingArguments`` plus the fields of :class:`~mmr_transformers.settings.MMRSettings`.

Being dataclass fields, they come out of ``HfArgumentParser`` as ``--mmr_alpha`` / ``--mmr-alpha`` etc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .settings import MMRSettings


@dataclass
class MMRTrainingArguments(MMRSettings, TrainingArguments):
    """``TrainingArguments`` plus Multi-Margin Regularization and Minimal-Margin-Score selection."""

    margin_diagnostics: bool = field(
        default=False, metadata={"help": "At each evaluation during training, record the evaluation set's margin "
                                         "diagnostics (MarginDiagnosticsCallback): margins/* scalars logged, the "
                                         "full records in output_dir/margin_diagnostics.json."}
    )

    def __post_init__(self):
        TrainingArguments.__post_init__(self)
        MMRSettings.__post_init__(self)
        if self.margin_diagnostics and self.eval_strategy == "no":
            raise ValueError("margin_diagnostics=True records the diagnostics at each evaluation during training, and "
                             "eval_strategy='no' runs none. Set eval_strategy to 'steps' or 'epoch'.")
        if self.selection_enabled and self.train_sampling_strategy == "batch_rebalance":
            raise ValueError(
                "train_sampling_strategy='batch_rebalance' builds its own batches of per_device_train_batch_size, "
                "which would replace the candidate batches of ceil(k·b) that selection scores. Use the 'random' or "
                "'sequential' train_sampling_strategy with selection, or selection='none'."
            )

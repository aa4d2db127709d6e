"""A test-only MMRTrainer that records what each step scored, selected and trained on."""

import copy

from conftest import row_key
from mmr_transformers import MMRTrainer


class RecordingTrainer(MMRTrainer):
    """Records what each step scored, selected and trained on, with the weights it scored with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.selections, self.trained = [], []

    def _select(self, candidates, micro_step):
        selected = super()._select(candidates, micro_step)
        self.selections.append(dict(
            step=self.state.global_step,
            candidates={k: v.clone() for k, v in candidates.items()},
            selected=[row_key(r) for r in selected["input_ids"]],
            weights=copy.deepcopy(self.model.state_dict()),
        ))
        return selected

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.trained.append([row_key(r) for r in inputs["input_ids"]])
        return super().training_step(model, inputs, num_items_in_batch)

"""Inputs, models and states MMRTrainer cannot handle exactly are refused before training, with the reason;
nothing in a checkpoint runs code; a diverging run stops instead of hiding NaN."""

import copy
import json
import os
import pickle
import re

import datasets
import pytest
import torch
from torch.utils.data import IterableDataset

from builders import RecordingTrainer, make_args, rows, tiny_model, token_dataset
from mmr_transformers import CachedScoreBatchSampler, MMRTrainer, multi_margin_penalty
from reference import brute_force_penalty, expected_loss


# ---- checkpoints ----------------------------------------------------------------------------------------

def crafted_state(path, marker):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(path, "wb") as f:
        pickle.dump({"scores": Exploit()}, f)


def cached_run(output_dir, **overrides):
    common = dict(mmr_alpha=0.0, selection="mms", selection_source="cached", selection_ratio=2, max_steps=2,
                  save_strategy="steps", save_steps=2)
    return MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, **{**common, **overrides}),
                      train_dataset=token_dataset(16))


def test_a_crafted_sampler_state_is_refused_without_running_anything(tmp_path):
    cached_run(str(tmp_path / "a")).train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    marker = tmp_path / "pwned"
    crafted_state(checkpoint / "mmr_sampler_state.pt", marker)
    resumed = cached_run(str(tmp_path / "b"), max_steps=4)
    with pytest.raises(ValueError, match="holds objects other than tensors, lists and numbers, so it is not a sampler "
                                         "state saved by MMRTrainer and was not loaded"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()


@pytest.mark.parametrize("source", ["cached", "fresh"])
def test_resuming_with_another_selection_ratio_is_refused_by_name(source, tmp_path):
    settings = dict(selection_source=source) if source == "cached" else dict(selection_source="fresh")
    cached_run(str(tmp_path / "a"), **settings).train()
    resumed = cached_run(str(tmp_path / "b"), max_steps=4, selection_ratio=4, **settings)
    with pytest.raises(ValueError, match=r"other settings than it was saved with: selection_ratio 2 -> 4\. These decide "
                                         r"which samples the run draws"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    saved = json.load(open(tmp_path / "a" / "checkpoint-2" / "mmr_settings.json"))
    assert saved["selection_ratio"] == 2 and saved["selection_source"] == source


def test_every_data_order_setting_is_saved_and_a_change_of_each_is_refused_by_name(tmp_path):
    """The checkpoint holds each setting that decides which samples come next; changing any one of them is refused,
    naming it with both values (world_size: the checkpoint's edited, as one process cannot launch two)."""
    cached_run(str(tmp_path / "cached")).train()
    pruning = dict(selection="none", selection_ratio=4, selection_source="fresh", prune_score="loss", prune_ratio=0.5)
    cached_run(str(tmp_path / "pruned"), **pruning).train()
    saved = json.load(open(tmp_path / "cached" / "checkpoint-2" / "mmr_settings.json"))
    assert set(saved) == {"selection", "selection_ratio", "selection_source", "selection_exploration", "prune_score",
                          "prune_ratio", "prune_anneal", "per_device_train_batch_size", "gradient_accumulation_steps",
                          "world_size"}
    changes = [("cached", dict(selection="loss"), "selection 'mms' -> 'loss'"),
               ("cached", dict(selection_ratio=3), "selection_ratio 2 -> 3"),
               ("cached", dict(selection_source="fresh"), "selection_source 'cached' -> 'fresh'"),
               ("cached", dict(selection_exploration=0.3), "selection_exploration 0.1 -> 0.3"),
               ("cached", dict(per_device_train_batch_size=2), "per_device_train_batch_size 4 -> 2"),
               ("cached", dict(gradient_accumulation_steps=2), "gradient_accumulation_steps 1 -> 2"),
               ("pruned", {**pruning, "prune_score": "margin"}, "prune_score 'loss' -> 'margin'"),
               ("pruned", {**pruning, "prune_ratio": 0.3}, "prune_ratio 0.5 -> 0.3"),
               ("pruned", {**pruning, "prune_anneal": 0.5}, "prune_anneal 0.875 -> 0.5")]
    for run, overrides, named in changes:
        trainer = cached_run(str(tmp_path / "resumed"), **overrides)
        checkpoint = str(tmp_path / run / "checkpoint-2")
        with pytest.raises(ValueError, match=rf"other settings than it was saved with: {re.escape(named)}\. "):
            trainer._check_resumed_settings(checkpoint)
    settings_file = tmp_path / "cached" / "checkpoint-2" / "mmr_settings.json"
    settings_file.write_text(json.dumps({**saved, "world_size": 2}))
    with pytest.raises(ValueError, match=r"other settings than it was saved with: world_size 2 -> 1\. "):
        cached_run(str(tmp_path / "resumed"))._check_resumed_settings(str(settings_file.parent))


@pytest.mark.parametrize("source", ["cached", "fresh"])
def test_resuming_from_a_model_only_checkpoint_is_refused_with_the_reason(source, tmp_path):
    """save_only_model=True leaves out the optimizer, scheduler, RNG and sampler states, so the run could not go on
    as the interrupted one; the stock Trainer would resume from fresh states without a word."""
    cached_run(str(tmp_path / "a"), selection_source=source, save_only_model=True).train()
    resumed = cached_run(str(tmp_path / "b"), selection_source=source, max_steps=4)
    with pytest.raises(ValueError, match=r"checkpoint-2 was saved with save_only_model=True: it holds the model's "
                                         r"weights but not the optimizer, scheduler, random-number and sampler states"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert not list(tmp_path.glob("b/checkpoint-*"))  # refused before any step


def test_resuming_with_the_saved_settings_is_accepted(tmp_path):
    cached_run(str(tmp_path / "a")).train()
    resumed = cached_run(str(tmp_path / "b"), max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.state.global_step == 4


# ---- models whose head is not what margins assume ---------------------------------------------------------

class NormedHead(torch.nn.Module):
    """A classifier whose logits are a LayerNorm of the last Linear's output: not a linear head."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(6, 8)
        self.classifier = torch.nn.Linear(8, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.config = type("Config", (), {"num_labels": 3})()

    def forward(self, features, labels=None):
        logits = self.norm(self.classifier(torch.relu(self.encoder(features))))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def feature_dataset(n=16, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g).tolist() if labels is None else labels
    return datasets.Dataset.from_dict({"features": torch.randn(n, 6, generator=g).tolist(), "labels": labels})


@pytest.mark.parametrize("settings", [dict(mmr_alpha=0.0, selection="mms", selection_ratio=2), dict(mmr_alpha=1e-3)])
def test_a_head_whose_output_is_not_the_logits_is_refused_before_any_step(settings, output_dir):
    model = NormedHead()
    before = copy.deepcopy(model.state_dict())
    trainer = MMRTrainer(model=model, args=make_args(output_dir, **settings), train_dataset=feature_dataset())
    with pytest.raises(ValueError, match=r"'classifier' \(shape \(2, 3\)\) is not the model's logits \(shape \(2, 3\)\): "
                                         r"same shape, other values.*not supported by MMR or margin-based selection"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- labels ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, message", [
    ([0.0, 1.0] * 8, r"labels must be class indices, one integer per sample; got dtype torch.float"),
    ([[1, 0, 1]] * 16, r"labels must be class indices, one integer per sample; got dtype torch.int64 and shape \(16, 3\)"),
    ([0, 1, 2] * 5 + [-1], r"got \[-1\]\. A label of -1 marks a hidden test label"),
    ([0, 1, 2] * 5 + [7], r"labels must be class indices in \[0, 3\) \(or -100 for a sample the loss skips\); got \[7\]\.$"),
])
def test_labels_that_are_not_class_indices_are_refused_before_training(labels, message, output_dir):
    data = token_dataset(16).remove_columns("labels").add_column("labels", labels)
    trainer = MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, mmr_alpha=0.0, selection="mms",
                                                                   selection_ratio=2), train_dataset=data)
    with pytest.raises(ValueError, match="the training set's 'labels' column: .*" + message):
        trainer.train()
    assert trainer.state.global_step == 0


def test_rows_labelled_minus_100_are_left_out_of_the_penalty():
    g = torch.Generator().manual_seed(0)
    weight, features = torch.randn(4, 5, generator=g), torch.randn(6, 5, generator=g) * 3
    logits, labels = features @ weight.T, torch.tensor([0, -100, 2, 3, -100, 1])
    kept = labels != -100
    expected = brute_force_penalty(features[kept], logits[kept], labels[kept].tolist(), weight)
    assert multi_margin_penalty(features, logits, labels, weight).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(brute_force_penalty(features, logits, labels.abs().clamp(max=3).tolist(), weight))


def test_a_batch_with_minus_100_labels_trains_with_the_model_loss_ignoring_them(output_dir):
    """The logged loss and R of a batch with a -100 row are CE + alpha·R over its three labelled rows."""
    data = token_dataset(16).remove_columns("labels").add_column("labels", [0, 1, 2, -100] * 4)
    model = tiny_model("bert", dropout=False)
    initial = copy.deepcopy(model).eval()
    alpha = 50.0
    trainer = MMRTrainer(model=model, train_dataset=data, args=make_args(
        output_dir, mmr_alpha=alpha, max_steps=1, train_sampling_strategy="sequential"))
    trainer.train()
    logged = trainer.state.log_history[0]
    batch = rows(data, 0, 4)
    labelled = {key: value[:3] for key, value in batch.items()}
    loss, penalty = expected_loss(initial, labelled, alpha)
    assert logged["loss"] == pytest.approx(loss, rel=1e-5) and logged["mmr/penalty"] == pytest.approx(penalty, rel=1e-5)
    as_class_0 = {**batch, "labels": batch["labels"].clamp(min=0)}  # what counting the row as class 0 would give
    assert expected_loss(initial, as_class_0, alpha)[1] != pytest.approx(penalty, rel=1e-3)


# ---- settings that cannot work -----------------------------------------------------------------------------

def test_batch_rebalance_sampling_with_selection_is_refused(output_dir):
    with pytest.raises(ValueError, match="train_sampling_strategy='batch_rebalance' builds its own batches"):
        make_args(output_dir, selection="mms", train_sampling_strategy="batch_rebalance")


class Stream(IterableDataset):
    def __iter__(self):
        yield from token_dataset(8)


@pytest.mark.parametrize("setting, method", [
    ("selection_source='cached'", dict(selection="mms", selection_source="cached")),
    ("prune_score='loss'", dict(prune_score="loss", prune_ratio=0.5)),
])
def test_a_score_cache_over_an_iterable_dataset_is_refused_at_construction(output_dir, setting, method):
    with pytest.raises(ValueError, match=rf"{setting} keeps a score per dataset index.*got a Stream "
                                         r"\(an IterableDataset\)"):
        MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, **method), train_dataset=Stream())


class OutOfMemoryOnce(RecordingTrainer):
    """Fails the first training step of the first attempt the way a CUDA OOM does."""

    failed = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not OutOfMemoryOnce.failed:
            OutOfMemoryOnce.failed = True
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().training_step(model, inputs, num_items_in_batch)


def test_a_retried_auto_find_batch_size_start_counts_only_the_new_attempt(output_dir):
    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=2, per_device_train_batch_size=8,
                     auto_find_batch_size=True, max_steps=2, logging_steps=2)
    trainer = OutOfMemoryOnce(model=tiny_model("bert"), args=args, train_dataset=token_dataset(64))
    trainer.train()
    log = trainer.state.log_history[0]
    b = trainer._train_batch_size
    assert b < 8  # the retry runs with a smaller batch
    assert log["mmr/samples_trained"] == sum(len(batch) for batch in trainer.trained) == 2 * b
    assert log["mmr/samples_scored"] == 2 * 2 * b  # two steps of k·b candidates, none from the failed attempt


# ---- mixed precision ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_penalty_is_computed_in_fp32_from_low_precision_inputs(dtype):
    g = torch.Generator().manual_seed(1)
    weight, features = torch.randn(5, 16, generator=g), torch.randn(12, 16, generator=g) * 4
    labels = torch.randint(0, 5, (12,), generator=g)
    low_w, low_f = weight.to(dtype), features.to(dtype)
    logits = low_f @ low_w.T
    got = multi_margin_penalty(low_f, logits, labels, low_w)
    expected = brute_force_penalty(low_f.float(), logits.float(), labels.tolist(), low_w.float())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)  # fp32 arithmetic on the same (rounded) inputs
    in_low = ((low_w[labels] - low_w[logits.float().masked_fill(torch.nn.functional.one_hot(labels, 5).bool(),
              float("-inf")).argmax(1)]).pow(2).sum(1) * low_f.pow(2).sum(1).max()).mean()
    assert abs(in_low.item() - expected) / expected > 1e-4  # what the low-precision arithmetic would have lost


# ---- a diverging run ---------------------------------------------------------------------------------------

def diverged_model():
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.pooler.dense.weight.fill_(float("nan"))
    return model


@pytest.mark.parametrize("settings, message", [
    (dict(mmr_alpha=1e-3), r"the MMR penalty is nan at step 0: the model's weights or features have diverged"),
    (dict(mmr_alpha=0.0, selection="mms", selection_ratio=2), r"selection='mms' scored candidates .* non-finite scores"),
])
def test_a_diverged_model_stops_training_with_the_reason(settings, message, output_dir):
    trainer = MMRTrainer(model=diverged_model(), args=make_args(output_dir, **settings), train_dataset=token_dataset(16))
    with pytest.raises(FloatingPointError, match=message):
        trainer.train()


def test_the_cached_sampler_refuses_nan_scores_instead_of_reading_them_as_never_scored():
    sampler = CachedScoreBatchSampler(10, batch_size=2, ratio=2)
    with pytest.raises(FloatingPointError, match=r"non-finite scores \[nan\] for samples \[3\]"):
        sampler.update(torch.tensor([2, 3]), torch.tensor([0.5, float("nan")]))
    sampler.update(torch.tensor([2, -1]), torch.tensor([0.5, float("nan")]))  # padding rows are ignored
    assert sampler.coverage() == 0.1


def test_drop_last_that_would_leave_no_candidate_batch_is_refused(output_dir):
    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=4, per_device_train_batch_size=4,
                     dataloader_drop_last=True, max_steps=-1, num_train_epochs=1)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(12))
    with pytest.raises(ValueError, match=r"12 training samples make no full batch of ceil\(k·b\) = 16 candidates"):
        trainer.train()

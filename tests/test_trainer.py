"""MMRTrainer does what the math says, on tiny random Transformers models."""

import copy

import numpy as np
import pytest
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from builders import SGD_STEP, RecordingTrainer, make_args, row_key, rows, tiny_model, token_dataset
from mmr_transformers import MMRTrainer, MMRTrainingArguments
from reference import (assert_moved_by, assert_penalty_moves, autograd_mmr_loss, brute_force_lowest_mms,
                       brute_force_model_mms, classifier_linear, expected_loss, independent_features, sgd_step_of)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_training_loss_is_cross_entropy_plus_alpha_times_the_penalty(arch, output_dir):
    data = token_dataset(32)
    model = tiny_model(arch, dropout=False)
    initial = copy.deepcopy(model)
    alpha = 50.0  # tiny random heads have small weights: a large alpha makes the term visible
    args = make_args(output_dir, mmr_alpha=alpha, max_steps=1, train_sampling_strategy="sequential")
    trainer = MMRTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logged = trainer.state.log_history[0]
    loss, penalty = expected_loss(initial.eval(), rows(data, 0, 4), alpha)
    assert logged["loss"] == pytest.approx(loss, rel=1e-5)
    assert logged["mmr/penalty"] == pytest.approx(penalty, rel=1e-5)
    assert logged["mmr/alpha"] == alpha
    assert penalty * alpha > 1e-3 * loss  # the term is large enough for the check to mean something


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_a_training_step_follows_the_gradient_of_cross_entropy_plus_alpha_times_the_penalty(arch, output_dir):
    """One plain SGD step moves every parameter by -lr times the gradient of CE + alpha·R written out by hand:
    R's gradient reaches W through the weight gap and the encoder through phi_max."""
    data = token_dataset(32)
    model = tiny_model(arch, dropout=False)
    reference = copy.deepcopy(model)
    alpha = 50.0
    MMRTrainer(model=model, args=make_args(output_dir, mmr_alpha=alpha, **SGD_STEP), train_dataset=data).train()
    batch, linear = rows(data, 0, 4), classifier_linear(reference)
    phi = independent_features(reference, batch)
    losses = {a: autograd_mmr_loss(phi, linear.weight, linear.bias, batch["labels"], a) for a in (alpha, 0.0)}
    expected = sgd_step_of(reference, losses[alpha])
    without_r = sgd_step_of(reference, losses[0.0])
    assert_moved_by(model, reference, expected)
    weight_name = next(n for n, p in reference.named_parameters() if p is linear.weight)
    encoder_name = next(n for n in expected if "embeddings" in n)
    assert_penalty_moves(expected, without_r, (weight_name, encoder_name))


def test_evaluation_loss_has_no_regularizer(output_dir):
    data = token_dataset(16)
    model = tiny_model("bert", dropout=False)
    mmr = MMRTrainer(model=model, args=make_args(output_dir, mmr_alpha=10.0), eval_dataset=data)
    stock = Trainer(model=model, args=TrainingArguments(output_dir=output_dir, report_to=[], use_cpu=True,
                                                        per_device_eval_batch_size=8), eval_dataset=data)
    plain, _ = expected_loss(model.eval(), rows(data, 0, 16), 0.0)
    got = mmr.evaluate()["eval_loss"]
    assert got == pytest.approx(plain, rel=1e-5)
    assert got == pytest.approx(stock.evaluate()["eval_loss"], rel=1e-6)


def test_alpha_zero_without_selection_matches_the_stock_trainer_bit_for_bit(output_dir):
    data = token_dataset(64)
    model = tiny_model("bert")  # dropout on: the random streams must line up too
    stock_model, mmr_model = copy.deepcopy(model), copy.deepcopy(model)
    common = dict(output_dir=output_dir, per_device_train_batch_size=4, max_steps=5, logging_steps=1, learning_rate=1e-3,
                  report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3)
    Trainer(model=stock_model, args=TrainingArguments(**common), train_dataset=data).train()
    trainer = MMRTrainer(model=mmr_model, args=MMRTrainingArguments(**common, mmr_alpha=0.0), train_dataset=data)
    trainer.train()
    for (name, a), (_, b) in zip(stock_model.state_dict().items(), mmr_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(model.classifier.weight, mmr_model.classifier.weight)


def test_gradient_accumulation_two_equals_a_batch_twice_as_large(output_dir):
    data = token_dataset(64)
    model = tiny_model("bert", dropout=False)
    runs = {}
    for accumulation, batch in [(1, 8), (2, 4)]:
        run_model = copy.deepcopy(model)
        args = make_args(output_dir, mmr_alpha=0.0, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         train_sampling_strategy="sequential", max_steps=3)
        trainer = MMRTrainer(model=run_model, args=args, train_dataset=data)
        trainer.train()
        runs[accumulation] = ([h["loss"] for h in trainer.state.log_history if "loss" in h], run_model)
    assert runs[1][0] == pytest.approx(runs[2][0], rel=1e-5)
    for a, b in zip(runs[1][1].parameters(), runs[2][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_with_mmr_logs_the_mean_of_the_micro_batch_losses(output_dir):
    data = token_dataset(32)
    model = tiny_model("bert", dropout=False)
    initial = copy.deepcopy(model).eval()
    args = make_args(output_dir, mmr_alpha=50.0, gradient_accumulation_steps=2, max_steps=1,
                     train_sampling_strategy="sequential")
    trainer = MMRTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    per_micro_batch = [expected_loss(initial, rows(data, s, s + 4), 50.0)[0] for s in (0, 4)]
    assert trainer.state.log_history[0]["loss"] == pytest.approx(np.mean(per_micro_batch), rel=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_each_trained_batch_is_the_lowest_mms_subset_of_its_candidates(arch, output_dir):
    data = token_dataset(96, variable_length=True)  # scoring chunks and trims padding: results must not change
    model = tiny_model(arch, initializer_range=1.0)  # spread-out margins: ranks that float32 rounding cannot flip
    args = make_args(output_dir, mmr_alpha=1e-3, selection="mms", selection_ratio=3, max_steps=4, gradient_accumulation_steps=2)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert len(trainer.selections) == 8 and trainer.trained == [r["selected"] for r in trainer.selections]
    assert trainer.state.log_history[0]["mmr/samples_scored"] == 24 and trainer.state.log_history[0]["mmr/samples_trained"] == 8
    scorer = copy.deepcopy(model).eval()
    for record in trainer.selections:
        scorer.load_state_dict(record["weights"])
        candidates = record["candidates"]
        assert len(candidates["input_ids"]) == 12
        lowest = brute_force_lowest_mms(scorer, candidates, 4)
        assert sorted(record["selected"]) == sorted(row_key(candidates["input_ids"][i]) for i in lowest)
    assert trainer.state.log_history[0]["mmr/mms_selected"] < trainer.state.log_history[0]["mmr/mms_candidates"]


def test_logged_mean_margins_are_means_over_samples_not_over_micro_batches(output_dir):
    """30 samples, k = 3, b = 4: candidate batches of 12, 12 and 6 in one logging window; the short last one
    weighs 6 of 30, not 1 of 3."""
    model = tiny_model("bert", initializer_range=1.0)
    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=3, max_steps=-1, num_train_epochs=1,
                     logging_steps=3)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=token_dataset(30))
    trainer.train()
    scorer = copy.deepcopy(model).eval()
    candidates, selected = [], []
    for record in trainer.selections:
        scorer.load_state_dict(record["weights"])
        margins = brute_force_model_mms(scorer, record["candidates"])
        keys = [row_key(r) for r in record["candidates"]["input_ids"]]
        candidates += list(margins)
        selected += [margins[keys.index(key)] for key in record["selected"]]
    assert [len(r["candidates"]["input_ids"]) for r in trainer.selections] == [12, 12, 6] and len(selected) == 10
    log = trainer.state.log_history[0]
    assert log["mmr/mms_candidates"] == pytest.approx(np.mean(candidates), rel=1e-4)
    assert log["mmr/mms_selected"] == pytest.approx(np.mean(selected), rel=1e-4)


@pytest.mark.parametrize("selection", ["mms", "random"])
def test_resume_reproduces_the_uninterrupted_run(selection, tmp_path):
    data = token_dataset(64)
    model = tiny_model("bert")
    runs = {}
    for name, resume in [("full", None), ("resumed", str(tmp_path / "full" / "checkpoint-3"))]:
        run_model = copy.deepcopy(model)
        args = make_args(str(tmp_path / name), mmr_alpha=1e-3, selection=selection, selection_ratio=2, max_steps=6,
                         save_strategy="steps", save_steps=3)
        trainer = RecordingTrainer(model=run_model, args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=resume)
        runs[name] = (trainer, run_model)
    full, resumed = runs["full"][0], runs["resumed"][0]
    assert [r["step"] for r in resumed.selections] == [3, 4, 5]
    assert [r["selected"] for r in resumed.selections] == [r["selected"] for r in full.selections[3:]]
    for (name, a), (_, b) in zip(runs["full"][1].state_dict().items(), runs["resumed"][1].state_dict().items()):
        assert torch.equal(a, b), name


def test_a_plain_training_arguments_object_gets_the_thesis_alpha(output_dir):
    args = TrainingArguments(output_dir=output_dir, max_steps=1, logging_steps=1, report_to=[], use_cpu=True,
                             per_device_train_batch_size=4, save_strategy="no")
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(8))
    trainer.train()
    assert trainer.state.log_history[0]["mmr/alpha"] == 1e-5 and trainer.state.log_history[0]["mmr/penalty"] > 0


def test_linear_alpha_schedule_reaches_its_end_on_the_last_step(output_dir):
    args = make_args(output_dir, mmr_alpha=1e-5, mmr_alpha_end=1e-3, mmr_alpha_schedule="linear", max_steps=3)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(16))
    trainer.train()
    assert [h["mmr/alpha"] for h in trainer.state.log_history if "loss" in h] == [1e-5, (1e-5 + 1e-3) / 2, 1e-3]


def test_the_command_line_has_every_mmr_flag(output_dir, capsys):
    (args,) = HfArgumentParser(MMRTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", output_dir, "--mmr-alpha", "1e-4", "--mmr_alpha_end", "1e-3", "--mmr-alpha-schedule", "linear",
         "--selection", "entropy", "--selection_ratio", "2.5", "--classifier_module", "classifier", "--use_cpu"]
    )
    assert (args.mmr_alpha, args.mmr_alpha_end, args.mmr_alpha_schedule) == (1e-4, 1e-3, "linear")
    assert (args.selection, args.selection_ratio, args.classifier_module) == ("entropy", 2.5, "classifier")
    with pytest.raises(SystemExit):
        HfArgumentParser(MMRTrainingArguments).parse_args_into_dataclasses(["--output_dir", output_dir, "--selection", "hardest"])
    assert "argument --selection: invalid choice: 'hardest'" in capsys.readouterr().err


# ---- bad input: clear errors, before any work is lost -----------------------------------------------


def test_selection_ratio_below_one_is_refused(output_dir):
    with pytest.raises(ValueError, match=r"selection_ratio must be >= 1: it is the candidate multiplier k .*got 0.5"):
        make_args(output_dir, selection="mms", selection_ratio=0.5)


def test_negative_alpha_is_refused(output_dir):
    with pytest.raises(ValueError, match=r"mmr_alpha must be >= 0 \(0 turns MMR off\); got -1"):
        make_args(output_dir, mmr_alpha=-1)


@pytest.mark.parametrize("settings, method", [({"mmr_alpha": 1e-5}, "MMR"), ({"mmr_alpha": 0.0, "selection": "mms"}, "selection='mms'")])
def test_a_regression_head_is_refused_at_construction(settings, method, output_dir):
    with pytest.raises(ValueError, match=f"{method}.* needs a single-label classification head .*regression head"):
        MMRTrainer(model=tiny_model("bert", num_labels=1), args=make_args(output_dir, **settings))


def test_a_regression_head_trains_when_mmr_and_selection_are_off(output_dir):
    g = torch.Generator().manual_seed(5)
    data = token_dataset(32, with_labels=False).add_column("labels", (2 * torch.randn(32, generator=g)).tolist())
    model = tiny_model("bert", num_labels=1, dropout=False)
    by_hand = copy.deepcopy(model)
    # constant rate, no clipping: the run is plain AdamW steps on the mean squared error, easy to redo by hand
    args = make_args(output_dir, mmr_alpha=0.0, max_steps=3, train_sampling_strategy="sequential",
                     lr_scheduler_type="constant", max_grad_norm=0.0)
    trainer = MMRTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    optimizer = torch.optim.AdamW(by_hand.parameters(), lr=1e-3, weight_decay=0.0)
    expected = []
    for start in (0, 4, 8):
        batch = rows(data, start, start + 4)
        prediction = by_hand(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        squared_error = ((prediction - batch["labels"].float()) ** 2).mean()
        expected.append(squared_error.item())
        optimizer.zero_grad()
        squared_error.backward()
        optimizer.step()
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h] == pytest.approx(expected, rel=1e-5)
    assert not any("mmr/penalty" in h for h in trainer.state.log_history)
    for (name, a), (_, b) in zip(model.named_parameters(), by_hand.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(model.classifier.weight, tiny_model("bert", num_labels=1).classifier.weight)


def test_a_model_whose_classifier_cannot_be_found_is_refused(output_dir):
    with pytest.raises(ValueError, match=r"classifier_module='head' is no such module in BertForSequenceClassification"):
        MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, classifier_module="head"))


def test_loss_selection_without_labels_is_refused_by_message(output_dir):
    args = make_args(output_dir, mmr_alpha=0.0, selection="loss", selection_ratio=2)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(16, with_labels=False))
    with pytest.raises(ValueError, match="selection='loss' ranks candidates by their labels, but the batch has no labels"):
        trainer.train()


def test_mmr_without_labels_is_refused_by_message(output_dir):
    trainer = MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir), train_dataset=token_dataset(16, with_labels=False))
    with pytest.raises(ValueError, match=r"MMR \(mmr_alpha > 0\) needs the labels of each training sample"):
        trainer.train()


def test_num_items_in_batch_counts_the_selected_samples(output_dir):
    seen = []

    def mean_cross_entropy(outputs, labels, num_items_in_batch=None):
        seen.append(int(num_items_in_batch))
        return torch.nn.functional.cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch

    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=3, gradient_accumulation_steps=2, max_steps=2)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(48),
                         compute_loss_func=mean_cross_entropy)
    trainer.train()
    assert seen == [8, 8, 8, 8]  # 2 micro-batches of 4 selected rows per step, not the 2 x 12 candidates


def test_mmr_with_a_compute_loss_func_under_accumulation_equals_the_model_loss_path(output_dir):
    """A compute_loss_func returns the micro-batch's share of the step's mean (sum / num_items_in_batch), which
    is already scaled for accumulation; MMR's batch-mean R must then be scaled alike, so the run equals the
    run on the model's own per-batch mean loss."""
    def mean_cross_entropy(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch

    data = token_dataset(32)
    model = tiny_model("bert", dropout=False)
    runs = {}
    for name, loss_func in [("model loss", None), ("compute_loss_func", mean_cross_entropy)]:
        run_model = copy.deepcopy(model)
        args = make_args(output_dir, mmr_alpha=50.0, gradient_accumulation_steps=2, max_steps=3,
                         train_sampling_strategy="sequential")
        trainer = MMRTrainer(model=run_model, args=args, train_dataset=data, compute_loss_func=loss_func)
        trainer.train()
        runs[name] = ([h for h in trainer.state.log_history if "loss" in h], run_model)
    (plain_logs, plain_model), (func_logs, func_model) = runs["model loss"], runs["compute_loss_func"]
    assert [h["loss"] for h in func_logs] == pytest.approx([h["loss"] for h in plain_logs], rel=1e-5)
    assert [h["mmr/penalty"] for h in func_logs] == pytest.approx([h["mmr/penalty"] for h in plain_logs], rel=1e-5)
    assert plain_logs[0]["mmr/penalty"] * 50.0 > 1e-2 * plain_logs[0]["loss"]  # a penalty scaled wrongly would show
    for (name, a), (_, b) in zip(plain_model.named_parameters(), func_model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


class NormedClassifier(torch.nn.Module):
    """A model with BatchNorm and dropout that records the mode of every forward pass."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(6)
        self.dropout = torch.nn.Dropout(0.5)
        self.classifier = torch.nn.Linear(6, 3)
        self.modes = []

    def forward(self, features, labels=None):
        self.modes.append(self.training)
        logits = self.classifier(self.dropout(self.norm(features)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def test_scoring_runs_in_eval_mode_leaves_batchnorm_statistics_alone_and_restores_the_mode(output_dir):
    import datasets

    g = torch.Generator().manual_seed(0)
    data = datasets.Dataset.from_dict({"features": (torch.randn(32, 6, generator=g) * 3 + 1).tolist(),
                                       "labels": torch.randint(0, 3, (32,), generator=g).tolist()})
    model = NormedClassifier()
    args = make_args(output_dir, selection="mms", selection_ratio=4, max_steps=1, learning_rate=0.0)
    trainer = MMRTrainer(model=model, args=args, train_dataset=data)
    model.train()
    candidates = next(iter(trainer.get_train_dataloader()))
    before = (model.norm.running_mean.clone(), model.norm.num_batches_tracked.clone())
    selected = trainer._select(candidates, micro_step=0)
    assert model.modes == [False] * 4 and model.training  # four chunks of 4 scored in eval mode, train mode back
    assert torch.equal(model.norm.running_mean, before[0]) and torch.equal(model.norm.num_batches_tracked, before[1])
    model.eval()
    trainer._select(candidates, micro_step=0)
    assert not model.training  # the previous mode is restored, whatever it was
    assert len(selected["labels"]) == 4


@pytest.mark.parametrize("scoring_batch_size, forwards", [(None, 2), (2, 4), (8, 1)])
def test_scoring_time_fraction_is_the_scoring_share_of_each_logging_window(output_dir, monkeypatch, scoring_batch_size,
                                                                           forwards):
    """A clock that only model forwards move (1 s a scoring forward, 3 s a training one): a step scores its
    k·b = 8 candidates in chunks of selection_scoring_batch_size (default b = 4), so a window of two steps spends
    2·forwards of its 2·forwards + 6 seconds scoring; the first also holds the check of the head on two rows of the
    first batch (one eval forward, not scoring)."""
    import types
    import mmr_transformers.trainer as trainer_module
    clock = [1000.0]
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    model = tiny_model("bert")
    model.register_forward_hook(lambda module, args, output: clock.__setitem__(0, clock[0] + (3.0 if module.training else 1.0)))
    trainer = MMRTrainer(model=model, train_dataset=token_dataset(64), args=make_args(
        output_dir, selection="mms", selection_ratio=2, max_steps=4, logging_steps=2,
        selection_scoring_batch_size=scoring_batch_size))
    trainer.train()
    fractions = [h["mmr/scoring_time_fraction"] for h in trainer.state.log_history if "loss" in h]
    assert fractions == pytest.approx([2 * forwards / (2 * forwards + 7), 2 * forwards / (2 * forwards + 6)], rel=1e-12)

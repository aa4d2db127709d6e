"""Selection from cached scores: the sampler's plans, the trainer's cache, and exact resume."""

import copy
import pytest
import torch

from builders import RecordingTrainer, make_args, row_key, tiny_model, token_dataset
from mmr_transformers import CachedScoreBatchSampler, MMRTrainer
from reference import brute_force_mms


def planned(sampler):
    return [i for batch in sampler for i in batch]


def test_a_pass_takes_unseen_samples_first_then_the_lowest_cached_scores():
    sampler = CachedScoreBatchSampler(40, batch_size=3, ratio=4, exploration=0.0, seed=0)
    scores = torch.randn(40, generator=torch.Generator().manual_seed(1))
    seen = torch.arange(40) % 5 != 0  # 8 samples never scored
    sampler.update(torch.arange(40)[seen], scores[seen])
    chosen = planned(sampler)
    assert len(chosen) == 10 and len(set(chosen)) == 10 and len(sampler) == 4
    unseen = set(torch.arange(40)[~seen].tolist())
    lowest_seen = sorted(torch.arange(40)[seen].tolist(), key=lambda i: scores[i].item())[:2]
    assert set(chosen) == unseen | set(lowest_seen)
    assert [len(b) for b in sampler.plan] == [3, 3, 3, 1]


def test_exploration_draws_its_share_outside_the_lowest_scores():
    sampler = CachedScoreBatchSampler(100, batch_size=5, ratio=4, exploration=0.4, seed=0)
    sampler.update(torch.arange(100), torch.arange(100).double())  # sample i has score i
    chosen = planned(sampler)
    assert len(chosen) == 25
    assert set(range(15)) <= set(chosen)  # the 15 lowest, then 10 random among the other 85
    assert len([i for i in chosen if i >= 15]) == 10
    explored = torch.zeros(100)
    for _ in range(400):  # uniform among the 85: each about 400·10/85 = 47 times (sd 6.4), none favoured
        explored[[i for i in planned(sampler) if i >= 15]] += 1
    assert explored[:15].sum() == 0 and explored.sum() == 4000
    assert 15 < explored[15:].min() and explored[15:].max() < 79


def test_passes_cover_every_sample_before_any_is_repeated():
    sampler = CachedScoreBatchSampler(20, batch_size=2, ratio=4, exploration=0.0, seed=3)
    seen = []
    for _ in range(4):
        chosen = planned(sampler)
        sampler.update(torch.tensor(chosen), torch.ones(len(chosen)))
        seen += chosen
    assert sorted(seen) == list(range(20)) and sampler.coverage() == 1.0


def test_state_dict_replays_an_unfinished_pass_and_continues_a_finished_one():
    def fresh():
        return CachedScoreBatchSampler(30, batch_size=2, ratio=3, exploration=0.2, seed=5)

    reference, resumed = fresh(), fresh()
    first = list(reference)
    reference.update(torch.tensor(first[0]), torch.tensor([0.5, -1.0]))
    reference.consumed(1)
    resumed.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert list(resumed) == first  # mid-pass: the same plan again (the Trainer skips what was trained)
    for batch in first[1:]:
        reference.update(torch.tensor(batch), torch.zeros(len(batch)))
        reference.consumed(1)
    resumed.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert list(resumed) == list(reference)  # finished pass: the next plan, from the same cache and generator
    assert torch.equal(resumed.scores.nan_to_num(9), reference.scores.nan_to_num(9))
    other = CachedScoreBatchSampler(31, batch_size=2, ratio=3)
    with pytest.raises(ValueError, match="cached scores for 30 samples but the training set has 31"):
        other.load_state_dict(reference.state_dict())


def test_bad_sampler_settings_are_refused_by_message():
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        CachedScoreBatchSampler(10, 2, ratio=0.5)
    with pytest.raises(ValueError, match=r"exploration must be in \[0, 1\]"):
        CachedScoreBatchSampler(10, 2, ratio=2, exploration=1.5)


def test_the_cache_holds_each_trained_samples_margin_from_its_training_forward(output_dir):
    data = token_dataset(48)
    model = tiny_model("bert", dropout=False, initializer_range=0.2)
    initial = copy.deepcopy(model).eval()
    # learning rate 0: the weights never move, so every cached margin is the initial model's margin
    args = make_args(output_dir, mmr_alpha=0.0, learning_rate=0.0, selection="mms", selection_source="cached",
                     selection_ratio=4, selection_exploration=0.0, num_train_epochs=4, max_steps=-1, logging_steps=3)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 12  # ceil(48/4) = 12 samples per epoch, batches of 4
    ids, mask = torch.tensor(data["input_ids"]), torch.tensor(data["attention_mask"])
    with torch.no_grad():
        logits = initial(input_ids=ids, attention_mask=mask).logits
    expected = torch.from_numpy(brute_force_mms(logits, initial.classifier.weight.detach()))
    torch.testing.assert_close(trainer._sampler.scores, expected, rtol=1e-5, atol=1e-6)
    keys = [row_key(r) for r in data["input_ids"]]
    trained = [key for batch in trainer.trained for key in batch]
    assert sorted(trained) == sorted(keys)  # 4 epochs x 12: unseen samples first, so each exactly once
    log = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["mmr/samples_trained"] for h in log] == [12] * 4 and log[0]["mmr/cache_coverage"] == pytest.approx(12 / 48)


@pytest.mark.parametrize("source", ["cached selection", "pruning by margin"])
def test_a_bf16_model_caches_the_margins_of_its_layer_computed_in_fp32(output_dir, source):
    """bf16 rounds logits near 30 to steps of 1/8, which ties nearby margins: each trained sample's cached score is
    the margin of W·phi + b recomputed in fp32 from what the layer saw in its training forward (recorded here by
    hooks), so it matches float64 on those bf16 features. A bias of 30 on every class leaves every margin as it is
    and puts the logits where rounding is coarse; learning rate 0 keeps the weights the initial model's."""
    data = token_dataset(48)
    model = tiny_model("bert", dropout=False, initializer_range=0.2)
    with torch.no_grad():
        model.classifier.bias += 30.0
    model = model.to(torch.bfloat16)
    initial = copy.deepcopy(model).eval()
    method = (dict(selection="mms", selection_source="cached", selection_ratio=4, selection_exploration=0.0,
                   num_train_epochs=4, max_steps=-1)  # unseen samples first: 12 a pass, each once
              if source == "cached selection" else dict(prune_score="margin", prune_ratio=0.5, max_steps=12))
    trainer = MMRTrainer(model=model, train_dataset=data, args=make_args(
        output_dir, mmr_alpha=0.0, learning_rate=0.0, **method))
    seen, features = {}, []  # row -> (phi, logits) of its training forward
    model.classifier.register_forward_hook(lambda module, args, output: features.append(args[0].detach()))
    model.register_forward_hook(lambda module, args, kwargs, output: seen.update(
        {row_key(r): (phi, s) for r, phi, s in zip(kwargs["input_ids"], features.pop(), output.logits.detach())})
        if module.training else features.clear(), with_kwargs=True)
    trainer.train()
    keys = [row_key(r) for r in data["input_ids"]]
    weight, bias = initial.classifier.weight.detach().double(), initial.classifier.bias.detach().double()
    exact = torch.stack([seen[key][0] for key in keys]).double() @ weight.T + bias
    rounded = torch.stack([seen[key][1] for key in keys]).double()
    if source == "cached selection":
        expected, of_rounded = (torch.from_numpy(brute_force_mms(s, weight)) for s in (exact, rounded))
    else:  # (s[y] - s[m]) / ||W[y] - W[m]||, m the highest-scoring wrong class
        labels = torch.tensor(data["labels"])
        rows = torch.arange(len(labels))

        def true_class_margin(scores):
            wrong = scores.clone()
            wrong[rows, labels] = float("-inf")
            m = wrong.argmax(dim=1)
            return (scores[rows, labels] - scores[rows, m]) / (weight[labels] - weight[m]).norm(dim=1)
        expected, of_rounded = true_class_margin(exact), true_class_margin(rounded)
    assert not trainer._sampler.scores.isnan().any()  # every sample was trained and scored
    torch.testing.assert_close(trainer._sampler.scores, expected, rtol=1e-4, atol=1e-4)
    assert (of_rounded - expected).abs().max() > 1e-3  # what margins of the rounded logits are off by


def test_later_epochs_prefer_the_lowest_cached_margins(output_dir):
    data = token_dataset(32)
    args = make_args(output_dir, mmr_alpha=0.0, learning_rate=0.0, selection="mms", selection_source="cached",
                     selection_ratio=2, selection_exploration=0.0, num_train_epochs=3, max_steps=-1)
    trainer = RecordingTrainer(model=tiny_model("bert", dropout=False, initializer_range=0.2), args=args, train_dataset=data)
    trainer.train()
    keys = [row_key(r) for r in data["input_ids"]]
    epoch3 = {key for batch in trainer.trained[8:] for key in batch}
    scores = trainer._sampler.scores
    assert epoch3 == {keys[i] for i in scores.argsort()[:16].tolist()}


def test_resume_from_mid_pass_and_end_of_pass_reproduces_the_uninterrupted_run(tmp_path):
    data = token_dataset(32)
    model = tiny_model("bert")
    # 32 samples, k = 2, b = 4: 4 batches per pass; checkpoints at step 2 (mid-pass), 4 (end of pass), 6
    common = dict(mmr_alpha=1e-3, selection="mms", selection_source="cached", selection_ratio=2,
                  selection_exploration=0.25, max_steps=10, save_strategy="steps", save_steps=2)
    full_model = copy.deepcopy(model)
    full = RecordingTrainer(model=full_model, args=make_args(str(tmp_path / "full"), **common), train_dataset=data)
    full.train()
    for checkpoint in (2, 4, 6):
        run_model = copy.deepcopy(model)
        resumed = RecordingTrainer(model=run_model, args=make_args(str(tmp_path / f"resumed{checkpoint}"), **common),
                                   train_dataset=data)
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{checkpoint}"))
        assert resumed.trained == full.trained[checkpoint:], checkpoint
        assert torch.equal(resumed._sampler.scores.nan_to_num(9), full._sampler.scores.nan_to_num(9))
        for (name, a), (_, b) in zip(full_model.state_dict().items(), run_model.state_dict().items()):
            assert torch.equal(a, b), (checkpoint, name)


def test_resume_needs_the_sampler_state_of_a_cached_run(tmp_path):
    data = token_dataset(16)
    plain = MMRTrainer(model=tiny_model("bert"), args=make_args(str(tmp_path / "a"), selection="mms", max_steps=2,
                                                                 save_strategy="steps", save_steps=2), train_dataset=data)
    plain.train()
    cached = MMRTrainer(model=tiny_model("bert"), args=make_args(str(tmp_path / "a"), selection="mms", selection_source="cached",
                                                                  max_steps=4), train_dataset=data)
    with pytest.raises(FileNotFoundError, match="has no mmr_sampler_state.pt: it was not saved by a run with selection_source='cached'"):
        cached.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))


def test_cached_selection_needs_a_strategy(output_dir):
    with pytest.raises(ValueError, match="selection_source='cached' needs a selection strategy"):
        make_args(output_dir, selection_source="cached")


def test_the_cached_and_pruning_samplers_draw_from_data_seed_when_it_is_set(output_dir):
    """Like the Trainer's own samplers: data_seed if set, else seed."""
    for options in (dict(selection="mms", selection_source="cached"), dict(prune_score="loss", max_steps=4)):
        for seeds, expected in (({"seed": 1, "data_seed": 5}, 5), ({"seed": 1}, 1)):
            args = make_args(output_dir, mmr_alpha=0.0, **options, **seeds)
            trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(16))
            trainer.get_train_dataloader()
            assert trainer._sampler.generator.initial_seed() == expected, (options, seeds)

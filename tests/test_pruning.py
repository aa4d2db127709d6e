"""InfoBatch-style pruning: the scores, the rounds' rule and unbiasedness, the trainer against a hand-written loop,
exact resume, and the refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from builders import RecordingTrainer, make_args, row_key, tiny_model, token_dataset
from mmr_transformers import MMRTrainer
from mmr_transformers.margins import true_class_margins
from mmr_transformers.pruning import PruningBatchSampler, learned_score, weighted_cross_entropy


def brute_force_true_class_margin(logits, weight, label):
    """(s[y] - s[m]) / ||W[y] - W[m]|| for the highest-scoring wrong class m, one sample, by a loop."""
    wrong = max((j for j in range(len(logits)) if j != label), key=lambda j: (logits[j].item(), -j))
    return ((logits[label] - logits[wrong]) / (weight[label] - weight[wrong]).norm()).item()


def test_true_class_margins_and_learned_scores_match_a_loop():
    g = torch.Generator().manual_seed(0)
    logits, weight = torch.randn(30, 5, generator=g), torch.randn(5, 7, generator=g)
    labels = torch.randint(0, 5, (30,), generator=g)
    labels[3] = -100
    margins = true_class_margins(logits, weight, labels)
    expected = [brute_force_true_class_margin(logits[n], weight, labels[n].item()) for n in range(30) if n != 3]
    torch.testing.assert_close(margins[torch.arange(30) != 3], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert margins[3].isnan() and learned_score("loss", logits, weight, labels)[3].isnan()
    assert ((margins > 0) == (logits.argmax(1) == labels))[labels != -100].all()  # positive = correctly classified
    loss_scores = learned_score("loss", logits, weight, labels)
    for n in (0, 7, 29):
        assert loss_scores[n].item() == pytest.approx(torch.log_softmax(logits[n], 0)[labels[n]].item(), rel=1e-5)


def test_weighted_cross_entropy_is_the_weighted_sum_over_labelled_rows():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.1, 0.0], [1.0, 3.0, 0.0]])
    labels, weights = torch.tensor([0, -100, 2]), torch.tensor([2.0, 5.0, 0.5])
    by_hand = (2.0 * -torch.log_softmax(logits[0], 0)[0] + 0.5 * -torch.log_softmax(logits[2], 0)[2]) / 2
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(by_hand.item(), rel=1e-6)


def one_round(sampler):
    """The next round's (index, weight) pairs: batches until the sampler plans again."""
    return sampler._plan_round()


def test_a_round_keeps_the_unseen_and_the_less_learned_and_a_weighted_share_of_the_well_learned():
    n, ratio = 60, 0.3
    sampler = PruningBatchSampler(n, batch_size=8, prune_ratio=ratio, anneal=0.9, progress=lambda: 0.5, seed=1)
    assert {i for i, w in one_round(sampler)} == set(range(n)) and sampler.last_pruned == 0  # nothing scored yet
    scores = torch.randn(n, generator=torch.Generator().manual_seed(2)).double()
    seen = torch.arange(n) % 6 != 0  # 10 samples never scored
    sampler.update(torch.arange(n)[seen], scores[seen])
    well = {i for i in range(n) if seen[i] and scores[i] > scores[seen].mean()}
    kept = dict(one_round(sampler))
    stay = round((1 - ratio) * len(well))
    assert set(range(n)) - well <= set(kept)  # every unseen or less-learned sample
    assert len(set(kept) & well) == stay and sampler.last_pruned == len(well) - stay
    assert all(kept[i] == pytest.approx(len(well) / stay) for i in well & set(kept))
    assert all(kept[i] == 1.0 for i in set(kept) - well)
    assert sum(kept.values()) == pytest.approx(n)  # the round's total weight is the data's: unbiased in sum


def test_every_well_learned_sample_has_expected_weight_one_over_many_rounds():
    n = 40
    sampler = PruningBatchSampler(n, batch_size=4, prune_ratio=0.5, anneal=1.0, progress=lambda: 0.0, seed=0)
    sampler.update(torch.arange(n), torch.arange(n).double())  # samples 20..39 are above the mean
    total = torch.zeros(n, dtype=torch.float64)
    rounds = 600
    for _ in range(rounds):
        for i, w in one_round(sampler):
            total[i] += w
    mean = total / rounds
    assert torch.equal(mean[:20], torch.ones(20, dtype=torch.float64))  # always kept, weight 1
    assert (mean[20:] - 1).abs().max() < 0.15  # kept half of the rounds at weight 2 (std of the mean ~0.04)


def test_annealing_keeps_everything_unweighted_and_epochs_keep_plain_trainings_length():
    progress = [0.0]
    sampler = PruningBatchSampler(10, batch_size=4, prune_ratio=0.5, anneal=0.5, progress=lambda: progress[0], seed=0)
    sampler.update(torch.arange(10), torch.arange(10).double())
    assert len(sampler) == 3
    epoch = list(sampler)
    assert [len(b) for b in epoch] == [4, 4, 4]  # rounds of 7-8 samples (2-3 of the 5 above the mean pruned), glued
    progress[0] = 0.5
    assert one_round(sampler) and all(w == 1.0 for _, w in one_round(sampler)) and len(one_round(sampler)) == 10


def test_an_epochs_batches_are_the_rounds_back_to_back_each_pair_once():
    """Iterating yields the rounds' (index, weight) pairs in plan order, glued across round and epoch boundaries
    into full batches: nothing repeated or dropped where a round ends inside a batch."""
    def scored_sampler():
        sampler = PruningBatchSampler(23, batch_size=4, prune_ratio=0.5, anneal=1.0, progress=lambda: 0.0, seed=1)
        sampler.update(torch.arange(23), torch.arange(23).double())  # 11 above the mean: rounds of 12 + 6 = 18
        return sampler
    iterated, twin = scored_sampler(), scored_sampler()
    epochs = [list(iterated) for _ in range(3)]
    assert [[len(batch) for batch in epoch] for epoch in epochs] == [[4] * 6] * 3  # ceil(23 / 4) full batches
    stream = [pair for epoch in epochs for batch in epoch for pair in batch]
    rounds = []
    while sum(map(len, rounds)) < len(stream):
        rounds.append([tuple(pair) for pair in twin._plan_round()])
        assert len(rounds[-1]) == 18
    assert stream == [pair for plan in rounds for pair in plan][: len(stream)]


def manual_pruned_training(model, data, steps, batch_size, lr, kind, ratio, anneal, seed):
    """What pruning must do, written as a plain loop: batches from the sampler (fetched one ahead within an epoch, as
    Accelerate's DataLoader does), each sample's cross-entropy weighted, SGD, then each trained sample's score by a
    loop over classes (kind 'margin') or its cross-entropy (kind 'loss')."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    done = [0]
    sampler = PruningBatchSampler(len(data), batch_size, ratio, anneal, lambda: done[0] / steps, seed=seed)
    trained = []
    while done[0] < steps:
        iterator = iter(sampler)
        ahead = next(iterator, None)
        while ahead is not None and done[0] < steps:
            batch, ahead = ahead, next(iterator, None)
            indices = [i for i, _ in batch]
            weights = torch.tensor([w for _, w in batch])
            rows = data[indices]
            labels = torch.tensor(rows["labels"])
            logits = model(input_ids=torch.tensor(rows["input_ids"]),
                           attention_mask=torch.tensor(rows["attention_mask"])).logits
            losses = F.cross_entropy(logits, labels, reduction="none")
            weight = model.classifier.weight.detach().clone()  # the weight of this forward, before the step
            ((losses * weights).sum() / len(batch)).backward()
            optimizer.step()
            optimizer.zero_grad()
            if kind == "margin":
                scores = [brute_force_true_class_margin(logits[n].detach(), weight, labels[n].item())
                          for n in range(len(batch))]
            else:
                scores = (-losses.detach()).tolist()
            sampler.update(torch.tensor(indices), torch.tensor(scores, dtype=torch.float64))
            sampler.consumed(1)
            trained.append([row_key(r) for r in rows["input_ids"]])
            done[0] += 1
    return trained, sampler


@pytest.mark.parametrize("kind", ["margin", "loss"])
def test_the_trainer_trains_what_the_pruning_rule_and_the_weighted_loss_say(output_dir, kind):
    data = token_dataset(16)
    model = tiny_model("bert", dropout=False, initializer_range=0.2)
    reference = copy.deepcopy(model)
    steps, lr = 14, 0.5
    args = make_args(output_dir, mmr_alpha=0.0, prune_score=kind, prune_ratio=0.5, prune_anneal=0.75, max_steps=steps,
                     learning_rate=lr, max_grad_norm=0.0, logging_steps=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=data,
                               optimizers=(optimizer, LambdaLR(optimizer, lambda _: 1.0)))
    trainer.train()
    expected_trained, expected_sampler = manual_pruned_training(reference, data, steps, 4, lr, kind, 0.5, 0.75, seed=7)
    assert trainer.trained == expected_trained
    assert sum(len(b) for b in trainer.trained) == steps * 4 and len({k for b in trainer.trained[4:8] for k in b}) < 16
    torch.testing.assert_close(trainer._sampler.scores, expected_sampler.scores, rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    pruned = [h["mmr/pruned_share"] for h in trainer.state.log_history if "mmr/pruned_share" in h]
    assert pruned[0] == 0 and max(pruned) > 0 and pruned[-1] == 0  # first round full, annealed at the end


@pytest.mark.parametrize("kind", ["margin", "loss"])
def test_rows_the_loss_skips_stay_uncached_and_every_trained_row_is_scored(output_dir, kind):
    """A label of -100 has no learned-ness score (NaN); it must not read as a diverged model."""
    skipped = {0, 5, 9}
    data = token_dataset(16).map(lambda row, i: {"labels": -100 if i in skipped else row["labels"]}, with_indices=True)
    args = make_args(output_dir, mmr_alpha=0.0, prune_score=kind, prune_ratio=0.5, max_steps=8, train_sampling_strategy="sequential")
    trainer = RecordingTrainer(model=tiny_model("bert"), args=args, train_dataset=data)
    trainer.train()
    keys = [row_key(r) for r in data["input_ids"]]
    trained = {keys.index(k) for batch in trainer.trained for k in batch}
    assert skipped < trained and len(trained) == 16
    scored = {i for i, score in enumerate(trainer._sampler.scores.tolist()) if score == score}
    assert scored == trained - skipped


def test_resume_mid_epoch_reproduces_the_uninterrupted_pruned_run(tmp_path):
    data = token_dataset(16)
    model = tiny_model("bert")
    common = dict(mmr_alpha=1e-3, prune_score="margin", prune_ratio=0.5, max_steps=12, save_strategy="steps", save_steps=3)
    full_model = copy.deepcopy(model)
    full = RecordingTrainer(model=full_model, args=make_args(str(tmp_path / "full"), **common), train_dataset=data)
    full.train()
    for checkpoint in (3, 6):
        run_model = copy.deepcopy(model)
        resumed = RecordingTrainer(model=run_model, args=make_args(str(tmp_path / f"resumed{checkpoint}"), **common),
                                   train_dataset=data)
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{checkpoint}"))
        assert resumed.trained == full.trained[checkpoint:], checkpoint
        for (name, a), (_, b) in zip(full_model.state_dict().items(), run_model.state_dict().items()):
            assert torch.equal(a, b), (checkpoint, name)


def test_pruning_needs_max_steps_labels_and_the_plain_loss(output_dir):
    data = token_dataset(16)
    with pytest.raises(ValueError, match="needs max_steps > 0"):
        MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, prune_score="loss", max_steps=-1,
                                                             num_train_epochs=2), train_dataset=data)
    with pytest.raises(ValueError, match="label_smoothing_factor and compute_loss_func would be dropped"):
        MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, prune_score="margin", label_smoothing_factor=0.1),
                   train_dataset=data)
    trainer = MMRTrainer(model=tiny_model("bert"), args=make_args(output_dir, mmr_alpha=0.0, prune_score="loss"),
                         train_dataset=data.remove_columns("labels"))
    with pytest.raises(ValueError, match="scores how well each training sample is learned from its label"):
        trainer.train()

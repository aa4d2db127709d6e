"""Cheaper fresh scoring: the int8 scorer, shorter inputs, and their rank agreement with the full model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from builders import RecordingTrainer, make_args, row_key, tiny_model, token_dataset
from mmr_transformers import MMRTrainer, minimal_margin_scores
from mmr_transformers.scoring import DynamicInt8Linear, quantized_scorer, rank_agreement, refresh_quantized_scorer, shorten_for_scoring
from reference import brute_force_model_mms

# The int8 copy must order candidates like the fp32 model: Spearman >= this on a tiny random BERT.
INT8_AGREEMENT = 0.9


def test_rank_agreement_is_spearmans_rho():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, generator=g)
    b = a + 0.7 * torch.randn(50, generator=g)
    assert rank_agreement(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    assert rank_agreement(a, a * 3 + 1) == pytest.approx(1.0) and rank_agreement(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="two 1-D vectors of equal length"):
        rank_agreement(a, b[:10])


def test_the_int8_copy_ranks_candidates_like_the_full_model():
    # initializer_range 0.2: at the default 0.02 a random tiny model's margins differ by under 1% across
    # samples, below int8 resolution, so no scorer could rank them; a trained model's margins are spread.
    model = tiny_model("bert", dropout=False, initializer_range=0.2).eval()
    batch = {k: torch.tensor(v) for k, v in token_dataset(128).to_dict().items() if k != "labels"}
    scorer = quantized_scorer(model)
    weight = model.classifier.weight
    with torch.no_grad():
        full = minimal_margin_scores(model(**batch).logits, weight)
        cheap = minimal_margin_scores(scorer(**batch).logits, weight)
    assert rank_agreement(cheap, full) >= INT8_AGREEMENT
    assert not torch.equal(cheap, full)  # it really is a different (quantized) computation
    assert type(model.classifier) is torch.nn.Linear and type(scorer.classifier) is not torch.nn.Linear


def test_refreshing_the_int8_copy_in_place_equals_building_a_new_one():
    model = tiny_model("bert", dropout=False, initializer_range=0.2).eval()
    batch = {k: torch.tensor(v) for k, v in token_dataset(64).to_dict().items() if k != "labels"}
    scorer = quantized_scorer(model)
    with torch.no_grad():
        stale = scorer(**batch).logits
        for parameter in model.parameters():  # an "optimizer step" touching every layer, embeddings included
            parameter.add_(0.05 * torch.randn_like(parameter))
        refreshed = refresh_quantized_scorer(scorer, model)
        assert refreshed is scorer
        new = quantized_scorer(model)
        assert torch.equal(scorer(**batch).logits, new(**batch).logits)
        assert not torch.equal(scorer(**batch).logits, stale)
        for parameter in model.parameters():  # the next step: both keep their int8 weights and share the rest
            parameter.add_(0.05 * torch.randn_like(parameter))
        assert torch.equal(scorer(**batch).logits, new(**batch).logits)


def test_the_int8_copy_shares_all_but_its_int8_weights_and_leaves_the_model_untouched():
    model = tiny_model("bert", dropout=False).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    scorer = quantized_scorer(model)
    live = {name: tensor.data_ptr() for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    scorer_tensors = dict(scorer.named_parameters()) | dict(scorer.named_buffers())
    # what the scorer holds as float tensors is the live storage (embeddings, LayerNorms), nothing copied;
    # every nn.Linear became an int8 layer, so none of their float weights remains
    assert scorer_tensors and all(tensor.data_ptr() == live[name] for name, tensor in scorer_tensors.items())
    assert not any(isinstance(m, torch.nn.Linear) for m in scorer.modules())
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == sum(
        isinstance(m, DynamicInt8Linear) for m in scorer.modules())
    assert model.training and not scorer.training  # the scorer's eval() is its own
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_text_keeps_the_real_tokens_on_either_padding_side():
    ids = torch.arange(1, 13).reshape(2, 6)
    right = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]), "labels": torch.tensor([0, 1])}
    short = shorten_for_scoring(right, max_length=4)
    assert short["input_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 10]] and short["labels"].tolist() == [0, 1]
    left = {"input_ids": ids, "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}
    assert shorten_for_scoring(left, max_length=3)["input_ids"].tolist() == [[4, 5, 6], [10, 11, 12]]
    assert shorten_for_scoring(right, max_length=10) is right


def test_images_are_scored_at_the_requested_resolution():
    images = torch.rand(3, 3, 32, 32)
    half = shorten_for_scoring({"pixel_values": images, "labels": torch.zeros(3)}, image_scale=0.5)["pixel_values"]
    assert half.shape == (3, 3, 16, 16)
    # antialiased: each output pixel is a weighted mean over its 2x2 block and neighbours, so it matches
    # a box-filtered image far better than plain subsampling does
    box = F.avg_pool2d(images, 2)
    assert (half - box).abs().mean() < (images[..., ::2, ::2] - box).abs().mean() / 2
    constant = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(shorten_for_scoring({"pixel_values": constant}, image_scale=0.5)["pixel_values"], constant[..., :16, :16])


def test_short_scoring_selects_the_lowest_margins_of_the_truncated_candidates(output_dir):
    data = token_dataset(96, variable_length=True)
    model = tiny_model("bert", initializer_range=1.0)
    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=3, max_steps=3,
                     selection_scoring_max_length=4, selection_agreement_steps=1)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    scorer = tiny_model("bert", initializer_range=1.0).eval()
    agreement = []
    for record in trainer.selections:
        scorer.load_state_dict(record["weights"])
        candidates = record["candidates"]
        short = brute_force_model_mms(scorer, {k: v[:, :4] for k, v in candidates.items() if k != "labels"})
        lowest = np.argsort(short, kind="stable")[:4]
        assert sorted(record["selected"]) == sorted(row_key(candidates["input_ids"][i]) for i in lowest)
        full = [row_key(r) for r in candidates["input_ids"]]
        assert all(key in full for key in record["selected"])  # trained on the full rows, not the truncated ones
        agreement.append(spearmanr(short, brute_force_model_mms(scorer, candidates)).statistic)
    logged = [h["mmr/rank_agreement"] for h in trainer.state.log_history if "mmr/rank_agreement" in h]
    assert logged == pytest.approx(agreement, abs=1e-9)  # one candidate batch per step, all without ties
    assert all(a < 1 for a in agreement)  # 4 of 8 tokens: not the full ranking


def test_the_int8_scorer_is_refreshed_every_refresh_steps_and_logs_its_agreement(output_dir):
    """Each step keeps the lowest margins of the int8 copy made at the last refresh (steps 0, 2, 4): its int8
    layers and the classifier weight it scores with are that step's; the float tensors it shares with the model
    (embeddings, LayerNorms) are live."""
    args = make_args(output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=4, max_steps=5, logging_steps=5,
                     learning_rate=3e-2, selection_scorer="int8", selection_scorer_refresh_steps=2,
                     selection_agreement_steps=1)
    model = tiny_model("bert", dropout=False, initializer_range=0.2)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=token_dataset(64))
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["mmr/scorer_refreshes"] == 3 and trainer._int8.built_at_step == 4  # built at step 0, refreshed at 2 and 4
    scorer, live = tiny_model("bert", dropout=False).eval(), tiny_model("bert", dropout=False).eval()
    live_would_differ, agreement = 0, []
    for record in trainer.selections:
        scorer.load_state_dict(trainer.selections[record["step"] - record["step"] % 2]["weights"])
        int8, stale_weight = quantized_scorer(scorer), scorer.classifier.weight.detach().clone()
        scorer.load_state_dict(record["weights"])  # in place: what the int8 copy shares with the model is live
        live.load_state_dict(record["weights"])
        inputs = {k: v for k, v in record["candidates"].items() if k != "labels"}
        with torch.no_grad():  # in the trainer's scoring chunks of b rows (all rows one length, so no reordering):
            # int8 activations are scaled per chunk
            logits = torch.cat([int8(**{k: v[i:i + 4] for k, v in inputs.items()}).logits for i in range(0, 16, 4)])
        stale = minimal_margin_scores(logits, stale_weight)
        keys = [row_key(r) for r in inputs["input_ids"]]
        assert sorted(record["selected"]) == sorted(keys[i] for i in stale.argsort()[:4].tolist())
        full = brute_force_model_mms(live, inputs)
        lowest_live = np.argsort(full, kind="stable")[:4]
        live_would_differ += sorted(record["selected"]) != sorted(keys[i] for i in lowest_live)
        agreement.append(spearmanr(stale.numpy(), full).statistic)
    assert live_would_differ  # the check above tells the stale int8 copy from the live model
    assert log["mmr/rank_agreement"] == pytest.approx(np.mean(agreement), abs=1e-6) and log["mmr/rank_agreement"] < 1


@pytest.mark.parametrize("settings, message", [
    (dict(selection_scorer="int8"), r"selection_scorer set the fresh scoring pass, which runs only with selection != 'none'"),
    (dict(selection="mms", selection_scoring_image_scale=1.5), r"selection_scoring_image_scale must be in \(0, 1\]"),
    (dict(selection="mms", selection_scoring_max_length=0), r"selection_scoring_max_length must be >= 1"),
    (dict(selection="mms", selection_scorer="fp8"), r"Unknown selection_scorer 'fp8'; choose one of \['model', 'int8'\]"),
    (dict(selection="mms", selection_scorer_refresh_steps=0), r"selection_scorer_refresh_steps must be >= 1"),
    (dict(selection="mms", selection_source="cached", selection_scorer="int8"), r"selection_source='cached'\)"),
])
def test_bad_cheap_scoring_settings_are_refused_by_message(settings, message, output_dir):
    with pytest.raises(ValueError, match=message):
        make_args(output_dir, **settings)

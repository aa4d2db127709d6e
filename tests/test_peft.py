"""PEFT LoRA on the classifier itself: margins from the effective weight W0 + scaling·B·A, as in the merged model."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from builders import SGD_STEP, make_args, rows, tiny_model, token_dataset
from mmr_transformers import MMRTrainer, find_classifier, minimal_margin_scores, select_rows
from reference import (assert_moved_by, assert_penalty_moves, autograd_mmr_loss, brute_force_mms, brute_force_penalty,
                       sgd_step_of)


def lora_model(target=("query", "value", "classifier"), use_dora=False, seed=0):
    model = tiny_model("bert", num_labels=4, dropout=False, initializer_range=0.5)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=list(target), lora_dropout=0.0,
                                                  use_dora=use_dora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B starts at zero in PEFT: give the update a real size
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return peft_model


def merged(peft_model):
    return copy.deepcopy(peft_model).merge_and_unload().eval()


def test_discovery_takes_the_lora_layer_and_its_effective_weight():
    model = lora_model()
    head = find_classifier(model)
    assert head.name == "base_model.model.classifier" and head.num_classes == 4
    reference = merged(model)
    torch.testing.assert_close(head.weight, reference.classifier.weight, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(head.weight, head.linear.weight)  # the LoRA update is really there
    assert find_classifier(model, "base_model.model.classifier.base_layer").name == head.name


def test_selection_keeps_the_rows_with_the_merged_models_smallest_margins():
    model = lora_model().eval()
    batch = rows(token_dataset(24, num_labels=4), 0, 24)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    head = find_classifier(model)
    chosen = select_rows(model, head.weight, inputs, 6, "mms")
    reference = merged(model)
    with torch.no_grad():
        logits = reference(**inputs).logits
    expected = brute_force_mms(logits.numpy(), reference.classifier.weight.detach().numpy())
    torch.testing.assert_close(chosen.margins.double(), torch.tensor(expected), rtol=1e-4, atol=1e-6)
    assert chosen.keep.tolist() == sorted(torch.tensor(expected).argsort()[:6].tolist())


def test_mmr_penalty_of_a_lora_classifier_equals_the_merged_models(output_dir):
    model = lora_model()
    reference = merged(model)
    data = token_dataset(16, num_labels=4)
    args = make_args(output_dir, mmr_alpha=1.0, max_steps=1, train_sampling_strategy="sequential")
    trainer = MMRTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    batch = rows(data, 0, 4)
    with torch.no_grad():
        phi = reference.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        logits = reference.classifier(phi)
    expected = brute_force_penalty(phi.numpy(), logits.numpy(), batch["labels"].tolist(),
                                   reference.classifier.weight.detach().numpy())
    assert trainer.state.log_history[0]["mmr/penalty"] == pytest.approx(expected, rel=1e-4)


def test_a_step_moves_the_adapters_by_the_gradient_through_the_effective_weight(output_dir):
    """One plain SGD step changes each trainable tensor (the adapters and the classifier's bias) by -lr times the
    gradient of CE + alpha·R written out by hand on W0 + scaling·B·A: R reaches B and A through the effective
    weight and the encoder's adapters through phi_max."""
    model = lora_model()
    reference = copy.deepcopy(model)
    data = token_dataset(16, num_labels=4)
    alpha = 50.0
    MMRTrainer(model=model, args=make_args(output_dir, mmr_alpha=alpha, **SGD_STEP), train_dataset=data).train()
    batch = rows(data, 0, 4)
    lora = reference.base_model.model.classifier
    weight = lora.base_layer.weight + lora.scaling["default"] * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
    phi = reference.base_model.model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
    losses = {a: autograd_mmr_loss(phi, weight, lora.base_layer.bias, batch["labels"], a) for a in (alpha, 0.0)}
    expected, without_r = sgd_step_of(reference, losses[alpha]), sgd_step_of(reference, losses[0.0])
    assert_moved_by(model, reference, expected)
    assert_penalty_moves(expected, without_r, [next(n for n in expected if part in n)
                                               for part in ("classifier.lora_B", "classifier.lora_A", "query.lora_A")])


def test_dora_on_the_classifier_is_refused_with_the_reason(output_dir):
    model = lora_model(use_dora=True)
    with pytest.raises(ValueError, match=r"adapted with DoRA .* margins need the plain LoRA update"):
        MMRTrainer(model=model, args=make_args(output_dir, mmr_alpha=1e-3), train_dataset=token_dataset(8, num_labels=4)).train()


def test_minimal_margins_use_the_same_weight_the_layer_applies():
    model = lora_model().eval()
    head = find_classifier(model)
    batch = rows(token_dataset(8, num_labels=4), 0, 8)
    with torch.no_grad(), head.capture() as captured:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    phi = captured.features_for(logits)
    torch.testing.assert_close(phi @ head.weight.T + head.linear.bias, logits, rtol=1e-5, atol=1e-5)
    assert minimal_margin_scores(logits, head.weight).shape == (8,)

"""PEFT LoRA on the classifier itself: margins from the effective weight W0 + scaling·B·A, as in the merged model."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from builders import make_args, rows, tiny_model, token_dataset
from mmr_transformers import MMRTrainer, find_classifier, minimal_margin_scores, select_rows
from reference import brute_force_mms, brute_force_penalty


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
    lora_b = dict(model.named_parameters())["base_model.model.classifier.lora_B.default.weight"]
    assert lora_b.requires_grad  # the penalty's gradient reaches the adapter through the effective weight


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

"""Classifier discovery and feature capture across Transformers and torchvision architectures."""

import pytest
import torch
import torchvision
from torch import nn

from builders import ARCHITECTURES, DECODERS, tiny_model
from mmr_transformers.heads import check_classification_head, find_classifier


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_finds_the_last_linear_layer_and_captures_its_input(arch):
    model = tiny_model(arch, num_labels=3).eval()
    head = find_classifier(model)
    assert head.name == ARCHITECTURES[arch][3]
    ids = torch.randint(3, 60, (5, 7))
    mask = torch.ones_like(ids)
    if arch in DECODERS:  # right padding in two rows, left in one: the model scores the last non-pad token
        ids[1, 4:], mask[1, 4:] = 0, 0
        ids[3, 6:], mask[3, 6:] = 0, 0
        ids[4, :2], mask[4, :2] = 0, 0
    with torch.no_grad(), head.capture() as captured:
        logits = model(input_ids=ids, attention_mask=mask).logits
    phi = captured.features_for(logits)
    assert phi.shape == (5, head.linear.in_features)
    bias = head.linear.bias if head.linear.bias is not None else 0
    torch.testing.assert_close(phi @ head.weight.T + bias, logits, rtol=1e-5, atol=1e-5)
    if arch in DECODERS:
        hidden = getattr(model, DECODERS[arch])(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(phi, hidden[torch.arange(5), torch.tensor([6, 3, 6, 5, 6])])


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda tv: tv.models.resnet18(num_classes=5), "fc"),
        (lambda tv: tv.models.VGG(tv.models.vgg.make_layers([8, "M", 512, "M"], batch_norm=True), num_classes=5), "classifier.6"),
        (lambda tv: tv.models.mobilenet_v2(num_classes=5, width_mult=0.25), "classifier.1"),
        (lambda tv: tv.models.mobilenet_v3_small(num_classes=5), "classifier.3"),
    ],
)
def test_torchvision_classifiers(factory, name):
    model = factory(torchvision).eval()
    head = find_classifier(model)
    assert head.name == name and head.num_classes == 5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), head.capture() as captured:
        logits = model(x)
    torch.testing.assert_close(captured.features_for(logits) @ head.weight.T + head.linear.bias, logits)


def test_a_named_module_overrides_discovery():
    model = tiny_model("distilbert")
    head = find_classifier(model, "pre_classifier")
    assert head.linear is model.pre_classifier


def test_a_head_whose_output_is_not_the_logits_is_refused():
    model = tiny_model("distilbert").eval()
    head = find_classifier(model, "pre_classifier")
    with torch.no_grad(), head.capture() as captured:
        logits = model(input_ids=torch.randint(3, 60, (2, 5))).logits
    with pytest.raises(ValueError, match="output of 'pre_classifier' .* is not the model's logits.*classifier_module"):
        captured.features_for(logits)


def test_a_missing_or_non_linear_module_is_named_in_the_error():
    model = tiny_model("roberta")
    with pytest.raises(ValueError, match=r"classifier_module='head' is no such module in RobertaForSequenceClassification.*classifier.out_proj"):
        find_classifier(model, "head")
    with pytest.raises(ValueError, match=r"classifier_module='classifier' is a RobertaClassificationHead, not an nn.Linear"):
        find_classifier(model, "classifier")


def test_a_model_without_a_matching_linear_layer_says_how_to_fix_it():
    class Scorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 8)
            self.config = type("Config", (), {"num_labels": 3})()

        def forward(self, x):
            return self.encoder(x)[:, :3]

    with pytest.raises(ValueError, match=r"could not find the classifier of Scorer: no nn.Linear layer with out_features == num_labels \(3\).*Pass classifier_module="):
        find_classifier(Scorer())


def test_regression_and_multi_label_heads_are_refused():
    regression = tiny_model("bert", num_labels=1)
    with pytest.raises(ValueError, match="MMR needs a single-label classification head with at least 2 classes.*regression head"):
        check_classification_head(regression, find_classifier(regression), "MMR")
    multi = tiny_model("bert", num_labels=4, problem_type="multi_label_classification")
    with pytest.raises(ValueError, match="multi_label_classification"):
        check_classification_head(multi, find_classifier(multi), "MMR")

"""The margin formulas against independent brute-force computations."""


import numpy as np
import pytest
import torch

from mmr_transformers.margins import minimal_margin_scores, most_competitive_wrong_class, multi_margin_penalty
from reference import brute_force_mms, brute_force_penalty, distance_to_boundary


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_mms_is_the_distance_to_the_top2_boundary(num_classes):
    rng = np.random.default_rng(num_classes)
    weight, bias = rng.normal(size=(num_classes, 5)), rng.normal(size=num_classes)
    features = rng.normal(size=(40, 5)) * 3
    logits = features @ weight.T + bias
    got = minimal_margin_scores(torch.tensor(logits), torch.tensor(weight)).numpy()
    brute_force = brute_force_mms(logits, weight)
    for n in range(len(features)):
        first, second = np.argsort(-logits[n])[:2]
        expected = distance_to_boundary(features[n], weight[first], weight[second], bias[first], bias[second])
        assert got[n] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert brute_force[n] == pytest.approx(expected, rel=1e-9, abs=1e-12)  # the shared reference is the distance too


def test_mms_is_zero_when_the_top_two_scores_tie():
    weight = torch.randn(4, 3)
    logits = torch.tensor([[2.0, 2.0, 1.0, 0.0], [0.5, 3.0, 3.0, 3.0], [1.0, 0.0, -1.0, -2.0]])
    got = minimal_margin_scores(logits, weight)
    assert got[0] == 0 and got[1] == 0
    assert got[2] == pytest.approx(1.0 / (weight[0] - weight[1]).norm().item(), rel=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_penalty_matches_brute_force(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    weight = torch.randn(num_classes, 6, generator=g)
    features = torch.randn(25, 6, generator=g)
    logits = features @ weight.T + torch.randn(num_classes, generator=g)
    labels = torch.randint(0, num_classes, (25,), generator=g)
    got = multi_margin_penalty(features, logits, labels, weight).item()
    assert got == pytest.approx(brute_force_penalty(features, logits, labels, weight), rel=1e-5)


def test_competitor_ties_go_to_the_lowest_index_and_penalty_follows():
    logits = torch.tensor([[5.0, 1.0, 1.0, 0.0], [2.0, 2.0, 9.0, 2.0]])
    labels = torch.tensor([0, 2])
    assert most_competitive_wrong_class(logits, labels).tolist() == [1, 0]
    weight = torch.randn(4, 3)
    features = torch.randn(2, 3)
    expected = brute_force_penalty(features, logits, labels.tolist(), weight)
    assert multi_margin_penalty(features, logits, labels, weight).item() == pytest.approx(expected, rel=1e-6)


def test_penalty_uses_the_largest_feature_norm_of_the_batch_for_every_sample():
    weight = torch.eye(3)
    features = torch.tensor([[0.1, 0.0, 0.0], [0.0, 10.0, 0.0]])
    logits = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    # both samples: ||W[y]-W[m]||² = 2, phi_max² = 100
    assert multi_margin_penalty(features, logits, torch.tensor([0, 1]), weight).item() == pytest.approx(200.0)


def test_penalty_gradient_passes_gradcheck():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    features = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (6,), generator=g)

    def penalty(features, weight):
        return multi_margin_penalty(features, features @ weight.T, labels, weight)

    assert torch.autograd.gradcheck(penalty, (features, weight))
    # phi_max is not detached: the gradient reaches only the largest-norm sample's features
    features.grad = None
    penalty(features, weight).backward()
    largest = features.detach().norm(dim=1).argmax()
    nonzero_rows = [i for i in range(6) if features.grad[i].abs().sum() > 0]
    assert nonzero_rows == [int(largest)]


def test_the_bias_picks_the_competitor_but_does_not_enter_the_penalty():
    """m_n is the highest wrong score of the logits W·phi + b as given; R itself is ||W[y] - W[m]||²·max||phi||²,
    with no bias term: the penalty of biased logits is the brute force on those logits, not on W·phi."""
    g = torch.Generator().manual_seed(0)
    weight, features = torch.randn(4, 6, generator=g), torch.randn(16, 6, generator=g)
    labels = torch.randint(0, 4, (16,), generator=g)
    unbiased = features @ weight.T
    biased = unbiased + torch.tensor([0.0, 3.0, -3.0, 1.0])
    assert not torch.equal(most_competitive_wrong_class(unbiased, labels), most_competitive_wrong_class(biased, labels))
    expected = brute_force_penalty(features, biased, labels.tolist(), weight)
    assert multi_margin_penalty(features, biased, labels, weight).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(brute_force_penalty(features, unbiased, labels.tolist(), weight), rel=1e-3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: minimal_margin_scores(torch.randn(4, 3), torch.randn(5, 8)), "logits have 3 classes but the classifier weight has 5 rows"),
        (lambda: minimal_margin_scores(torch.randn(4), torch.randn(3, 8)), "logits must be 2-D"),
        (lambda: minimal_margin_scores(torch.randn(4, 1), torch.randn(1, 8)), "at least 2 classes"),
        (lambda: multi_margin_penalty(torch.randn(4, 7), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(3, 8)), "features must be (batch, feature_dim) = (4, 8)"),
        (lambda: multi_margin_penalty(torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), torch.randn(3, 8)), "labels must be class indices in [0, 3)"),
    ],
)
def test_bad_shapes_are_refused_with_a_message(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)

import pytest

from mmr_transformers.schedules import alpha_at


def test_constant():
    assert [alpha_at("constant", s, 10, 1e-5) for s in (0, 5, 9)] == [1e-5] * 3


@pytest.mark.parametrize("total", [2, 7, 156_000])
def test_linear_hits_both_endpoints_exactly_and_is_linear_between(total):
    values = [alpha_at("linear", s, total, 1e-5, 1e-3) for s in range(0, total, max(1, total // 50))]
    assert alpha_at("linear", 0, total, 1e-5, 1e-3) == 1e-5
    assert alpha_at("linear", total - 1, total, 1e-5, 1e-3) == 1e-3
    assert alpha_at("linear", total + 5, total, 1e-5, 1e-3) == 1e-3
    assert all(a < b for a, b in zip(values, values[1:]))
    mid = (total - 1) / 2
    if mid == int(mid):
        assert alpha_at("linear", int(mid), total, 1e-5, 1e-3) == pytest.approx((1e-5 + 1e-3) / 2, rel=1e-12)


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown mmr_alpha_schedule 'cosine'; choose one of \['constant', 'linear'\]"):
        alpha_at("cosine", 0, 10, 1e-5)

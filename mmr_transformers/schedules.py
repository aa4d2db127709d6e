"""Schedules of the MMR coefficient alpha over optimizer steps ``0 … total_steps - 1``."""

from __future__ import annotations

from collections.abc import Callable

AlphaSchedule = Callable[[int, int, float, float], float]

ALPHA_SCHEDULES: dict[str, AlphaSchedule] = {}
SCHEDULES_USING_END: set[str] = set()  # the schedules that read mmr_alpha_end (it is refused with the others)


def register_alpha_schedule(name: str, *, uses_end: bool) -> Callable[[AlphaSchedule], AlphaSchedule]:
    """Register ``fn(step, total_steps, start, end) -> alpha`` as ``mmr_alpha_schedule=name``; ``uses_end``
    says whether it reads ``end`` (``mmr_alpha_end``, which defaults to ``start``)."""

    def register(fn: AlphaSchedule) -> AlphaSchedule:
        ALPHA_SCHEDULES[name] = fn
        if uses_end:
            SCHEDULES_USING_END.add(name)
        else:  # a replaced schedule's old entry must not survive
            SCHEDULES_USING_END.discard(name)
        return fn

    return register


@register_alpha_schedule("constant", uses_end=False)
def constant_alpha(step: int, total_steps: int, start: float, end: float) -> float:
    """``alpha(t) = start`` (thesis: GLUE 1e-5, ImageNet 1e-5)."""
    return start


@register_alpha_schedule("linear", uses_end=True)
def linear_alpha(step: int, total_steps: int, start: float, end: float) -> float:
    """``alpha(t) = (1 - t/(T-1))·start + t/(T-1)·end``, exactly ``start`` at step 0 and ``end`` at step T-1
    (thesis CIFAR recipe: 1e-5 → 1e-3). Steps past the end stay at ``end``."""
    if total_steps <= 1:
        return end
    fraction = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return (1.0 - fraction) * start + fraction * end


def alpha_at(schedule: str, step: int, total_steps: int, start: float, end: float | None = None) -> float:
    """alpha at optimizer step ``step`` of ``total_steps`` under the named schedule."""
    try:
        fn = ALPHA_SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"Unknown mmr_alpha_schedule {schedule!r}; choose one of {sorted(ALPHA_SCHEDULES)}.") from None
    return fn(step, total_steps, start, start if end is None else end)

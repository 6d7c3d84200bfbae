"""Tests for catsdogs.training.schedules: the shape of each schedule and the linear warmup."""

from __future__ import annotations

import pytest

from catsdogs.errors import UsageError
from catsdogs.training.schedules import SCHEDULERS, constant, cosine, list_schedulers, lr_factor, onecycle, step

GRID = [i / 100 for i in range(101)]


def test_the_documented_schedules_are_registered() -> None:
    assert list_schedulers() == ["constant", "cosine", "onecycle", "step"]


def test_constant_is_one_throughout() -> None:
    assert [constant(p) for p in GRID] == [1.0] * len(GRID)
    assert [lr_factor("constant", i, 50) for i in range(50)] == [1.0] * 50


def test_step_drops_tenfold_at_half_and_three_quarters() -> None:
    assert [step(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


def test_cosine_falls_from_one_to_zero() -> None:
    assert cosine(0.0) == 1.0
    assert cosine(0.5) == pytest.approx(0.5)
    assert cosine(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [cosine(p) for p in GRID]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert cosine(1.5) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at the bottom


def test_cosine_over_a_run_ends_near_zero() -> None:
    factors = [lr_factor("cosine", i, 1000) for i in range(1000)]
    assert factors[0] == 1.0
    assert factors[-1] < 1e-4


def test_onecycle_peaks_at_thirty_percent() -> None:
    values = [onecycle(p) for p in GRID]
    assert GRID[values.index(max(values))] == 0.3
    assert onecycle(0.3) == pytest.approx(1.0)
    assert onecycle(0.0) == pytest.approx(0.04)  # starts at 1/25 of the rate
    assert onecycle(0.15) == pytest.approx(0.52)  # halfway up the linear rise
    assert onecycle(1.0) == pytest.approx(1e-4)
    rising, falling = values[:31], values[30:]
    assert all(a < b for a, b in zip(rising, rising[1:]))
    assert all(a > b for a, b in zip(falling, falling[1:]))


def test_warmup_ramps_linearly_then_hands_over_to_the_schedule() -> None:
    factors = [lr_factor("constant", i, total_steps=20, warmup_steps=4) for i in range(8)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_warmup_then_cosine_starts_the_cosine_after_the_warmup() -> None:
    factors = [lr_factor("cosine", i, total_steps=14, warmup_steps=4) for i in range(14)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # After warmup the cosine runs over the remaining 10 steps: progress 0/10, 1/10, ... 9/10.
    assert factors[4:] == pytest.approx([cosine(k / 10) for k in range(10)])


def test_warmup_rises_to_the_schedules_starting_value() -> None:
    factors = [lr_factor("onecycle", i, total_steps=100, warmup_steps=2) for i in range(3)]
    assert factors == pytest.approx([0.02, 0.04, 0.04])


def test_unknown_schedule_lists_the_choices() -> None:
    with pytest.raises(UsageError, match="unknown scheduler 'wobbly'; choose one of: constant, cosine, onecycle, step"):
        lr_factor("wobbly", 0, 10)


def test_every_schedule_stays_between_zero_and_one() -> None:
    for name in list_schedulers():
        schedule = SCHEDULERS.get(name)
        assert all(0.0 <= schedule(p) <= 1.0 for p in GRID), name


def test_only_a_flat_schedule_does_not_depend_on_the_runs_length() -> None:
    from catsdogs.training.schedules import depends_on_length

    assert {name: depends_on_length(name) for name in list_schedulers()} == {
        "constant": False, "cosine": True, "onecycle": True, "step": True}

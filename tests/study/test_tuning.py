"""Tests for catsdogs.study.tuning: the learning-rate grid, its widening on an edge, and its limit."""

from __future__ import annotations

import math

import pytest

from catsdogs.study.tuning import (INITIAL_STEPS, LIMIT_STEPS, grid_lr, lr_factor, next_steps, stable_steps,
                                   sweep_in_rounds, trained_floor)


def peaked_at(best: dict[str, float]):
    """A stand-in for a round of sweep runs: each optimizer's score peaks at its own step (log-rate), and
    the round chooses the best step it was given, as the study does, counting every point it ran."""
    ran: list[tuple[str, int]] = []

    def run_round(grid: dict[str, tuple[int, ...]]) -> dict[str, int]:
        ran.extend((optim, step) for optim, steps in grid.items() for step in steps if (optim, step) not in ran)
        return {optim: max(steps, key=lambda step: -abs(step - best[optim])) for optim, steps in grid.items()}

    return run_round, ran


def test_the_initial_grid_is_nine_half_decades_two_decades_each_side_of_the_default() -> None:
    assert [lr_factor(step) for step in INITIAL_STEPS] == pytest.approx(
        [0.01, 0.0316228, 0.1, 0.316228, 1.0, 3.16228, 10.0, 31.6228, 100.0], rel=1e-5)
    assert [grid_lr(0.01, step) for step in INITIAL_STEPS] == [0.0001, 0.000316, 0.001, 0.00316, 0.01, 0.0316, 0.1,
                                                               0.316, 1.0]
    assert math.isclose(lr_factor(1) ** 2, 10.0)  # two steps make a decade
    assert lr_factor(LIMIT_STEPS) == pytest.approx(1e4) and lr_factor(-LIMIT_STEPS) == pytest.approx(1e-4)


def test_next_steps_widen_only_an_edge_and_never_past_the_limit() -> None:
    assert next_steps(INITIAL_STEPS, 0) == []
    assert next_steps(INITIAL_STEPS, -4) == [-5] and next_steps(INITIAL_STEPS, 4) == [5]
    assert next_steps(range(-8, 5), -8) == [] and next_steps(range(-4, 9), 8) == []


def test_an_interior_best_ends_the_sweep_after_one_round() -> None:
    run_round, ran = peaked_at({"adam": 1.3, "momentum": -2.0})
    sweep = sweep_in_rounds(["adam", "momentum"], run_round)
    assert sweep.rounds == 1 and sweep.chosen == {"adam": 1, "momentum": -2}
    assert sweep.grid == {"adam": INITIAL_STEPS, "momentum": INITIAL_STEPS}
    assert len(ran) == 18 and not sweep.at_edge("adam") and not sweep.at_limit("adam")


def test_a_best_on_an_edge_widens_that_side_round_by_round_for_that_optimizer_alone() -> None:
    # adam peaks at 10^3 times its default (step 6), two half-decades past the initial grid's top.
    run_round, ran = peaked_at({"adam": 6.0, "momentum": 0.0})
    sweep = sweep_in_rounds(["adam", "momentum"], run_round)
    assert sweep.chosen == {"adam": 6, "momentum": 0}
    assert sweep.grid["adam"] == tuple(range(-4, 8)) and sweep.grid["momentum"] == INITIAL_STEPS
    assert sweep.rounds == 4  # steps 5, 6 and 7 added one per round; 7 scored worse than 6, so the sweep ended
    assert len(ran) == 9 + 12 and len(set(ran)) == len(ran)  # each point runs once
    assert not sweep.at_edge("adam") and not sweep.at_limit("adam")


def test_the_low_edge_widens_too() -> None:
    run_round, _ = peaked_at({"adam": -5.0})
    sweep = sweep_in_rounds(["adam"], run_round)
    assert sweep.grid["adam"] == tuple(range(-6, 5)) and sweep.chosen == {"adam": -5}


def test_a_best_still_on_the_limit_is_flagged() -> None:
    run_round, ran = peaked_at({"adam": 20.0, "momentum": -20.0})
    sweep = sweep_in_rounds(["adam", "momentum"], run_round)
    assert sweep.grid["adam"] == tuple(range(-4, LIMIT_STEPS + 1))
    assert sweep.grid["momentum"] == tuple(range(-LIMIT_STEPS, 5))
    assert sweep.chosen == {"adam": LIMIT_STEPS, "momentum": -LIMIT_STEPS}
    assert sweep.at_limit("adam") and sweep.at_limit("momentum") and sweep.rounds == 5
    assert max(lr_factor(step) for _, step in ran) == pytest.approx(1e4)


def test_an_interrupted_round_interrupts_the_sweep() -> None:
    rounds: list[int] = []

    def run_round(grid):
        rounds.append(1)
        return None if len(rounds) == 2 else {"adam": max(grid["adam"])}

    assert sweep_in_rounds(["adam"], run_round) is None and len(rounds) == 2


def test_the_initial_grid_must_lie_within_the_limit() -> None:
    with pytest.raises(ValueError, match="past the limit of 2 steps"):
        sweep_in_rounds(["adam"], lambda grid: {"adam": 0}, limit=2)


def test_a_run_counts_as_trained_from_halfway_between_chance_and_the_best_run() -> None:
    assert trained_floor([0.5, 0.74, 0.6], chance=0.5) == pytest.approx(0.62)
    assert trained_floor([0.3, 0.9], chance=0.25) == pytest.approx(0.575)  # four classes, balanced accuracy
    assert trained_floor([], chance=0.5) == 0.5


def test_a_stable_step_trains_on_every_seed_and_so_does_the_step_above() -> None:
    scores = {-1: [0.70, 0.70], 0: [0.74, 0.73], 1: [0.55, 0.72], 2: [0.5, 0.5]}
    assert stable_steps(scores, floor=0.62) == [-1]  # 0's neighbour above fails on the first seed
    assert stable_steps({**scores, 1: [0.66, 0.72]}, floor=0.62) == [-1, 0]
    # The top of the grid never qualifies (the rate above it was not tried), nor does a step beside a gap.
    assert stable_steps({0: [0.8], 1: [0.8]}, floor=0.6) == [0]
    assert stable_steps({-2: [0.8], 0: [0.8], 1: [0.8]}, floor=0.6) == [0]
    assert stable_steps({0: [], 1: [0.8]}, floor=0.6) == []

"""The learning-rate grid a study tunes on, how it widens at an edge, and the rules that choose from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

# A grid point is a whole number of half-decade steps from the optimizer's default learning rate:
# step k means the default times 10 ** (k / 2).
INITIAL_STEPS = tuple(range(-4, 5))  # 10^-2 ... 10^2 around the default: two decades each side, 9 rates
LIMIT_STEPS = 8  # the grid never reaches past 10^-4 ... 10^4 times the default: four decades each side

# How a rate is chosen from the sweep (compare --tune-rule):
#   best:   the rate with the best mean score over the tuning seeds (as DeepOBS and Schmidt et al. choose);
#   stable: the best of the rates that leave a step of margin: every tuning seed trained at the rate and at
#           the next rate up. The best mean often sits next to the rate where training comes apart on some
#           seeds, so a seed the sweep never tried may come apart at it too.
TUNE_RULES = ("best", "stable")

Round = Callable[[dict[str, tuple[int, ...]]], "dict[str, int] | None"]


def lr_factor(step: int) -> float:
    """The multiple of the default learning rate at `step` half-decades: 0 -> 1, 1 -> 3.16, -2 -> 0.1."""
    return 10.0 ** (step / 2)


def grid_lr(default: float, step: int) -> float:
    """The learning rate a sweep run trains with, to 3 significant digits (so run folders get short names)."""
    return float(f"{default * lr_factor(step):.3g}")


def next_steps(steps: Sequence[int], chosen: int, limit: int = LIMIT_STEPS) -> list[int]:
    """The step to add beside `chosen` when it lies on an edge of `steps` and the limit allows one more, else none."""
    low, high = min(steps), max(steps)
    if chosen == low and low > -limit:
        return [low - 1]
    if chosen == high and high < limit:
        return [high + 1]
    return []


def trained_floor(scores: Iterable[float], chance: float) -> float:
    """The score a tuning run must reach to count as trained: halfway from chance to the best of `scores`
    (an optimizer's tuning runs), so "trained" means the same share of what that optimizer can reach."""
    return chance + (max(scores, default=chance) - chance) / 2


def stable_steps(seed_scores: Mapping[int, Sequence[float]], floor: float) -> list[int]:
    """The steps of the grid (step -> each tuning seed's score) where every seed reached `floor`, at the step
    and at the step above; the top of the grid never qualifies (the rate above it was not tried)."""
    steady = {step for step, scores in seed_scores.items() if scores and min(scores) >= floor}
    return sorted(step for step in steady if step + 1 in steady)


@dataclass
class Sweep:
    """A finished sweep: each optimizer's grid (steps), the step of its best mean (the grid grows around it; the
    rule `stable` may then choose a lower one), and how many rounds it took."""

    grid: dict[str, tuple[int, ...]]
    chosen: dict[str, int]  # the best mean's step
    rounds: int
    limit: int = LIMIT_STEPS

    def at_edge(self, optim: str) -> bool:
        """Whether the best mean lies on an edge of the grid searched (the sweep ends so only at the limit)."""
        return self.chosen[optim] in (min(self.grid[optim]), max(self.grid[optim]))

    def at_limit(self, optim: str) -> bool:
        """Whether the best mean lies on the limit, so a better rate may lie beyond what the sweep may try."""
        return abs(self.chosen[optim]) >= self.limit and self.at_edge(optim)


def sweep_in_rounds(optims: Sequence[str], run_round: Round, initial: Sequence[int] = INITIAL_STEPS,
                    limit: int = LIMIT_STEPS) -> Sweep | None:
    """Tune every optimizer alike: the same initial grid, then, while an optimizer's best rate lies on an
    edge of its grid, one more half-decade step on that side per round, up to `limit` steps from the default.

    `run_round(grid)` runs every point of `grid` not run yet and returns each optimizer's chosen step (by
    validation only), or None when the runs were interrupted (then so is the sweep: None). Rounds are
    deterministic, so a sweep run again replays them over the runs already finished.
    """
    if max(abs(step) for step in initial) > limit:
        raise ValueError(f"the initial grid reaches past the limit of {limit} steps: {list(initial)}")
    grid = {optim: tuple(sorted(initial)) for optim in optims}
    rounds = 0
    while True:
        rounds += 1
        chosen = run_round(dict(grid))
        if chosen is None:
            return None
        grown = {optim: next_steps(grid[optim], chosen[optim], limit) for optim in optims}
        if not any(grown.values()):
            return Sweep(grid, chosen, rounds, limit)
        grid = {optim: tuple(sorted((*grid[optim], *grown[optim]))) for optim in optims}

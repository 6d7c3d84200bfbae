"""A study's learning-rate sweep: its runs, round by round, and each optimizer's rate chosen on validation."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from catsdogs.data.cache import read_split
from catsdogs.study.layout import StudyFolder, SweepGrid, SweepRow, TuningEffort, TuningRecord, score_name
from catsdogs.study.report import best_row, majority_share
from catsdogs.study.study_run import Planned, run_length
from catsdogs.study.tuning import (INITIAL_STEPS, LIMIT_STEPS, Sweep, grid_lr, lr_factor, stable_steps, sweep_in_rounds,
                                   trained_floor)
from catsdogs.training.config import TrainConfig
from catsdogs.training.runs import read_history
from catsdogs.training.selection import best_epoch, selected_by
from catsdogs.training.train import resolve_config

TUNE_FRACTION = 0.25  # the share of the epochs (or seconds) a sweep run gets


@dataclass(frozen=True)
class LrSweep:
    """One study's sweep: what its runs share, the optimizers it tunes, and where their folders go."""

    base: TrainConfig  # the study's shared config; each sweep run sets its optimizer, rate, seed and length
    optims: tuple[str, ...]
    out: Path  # the study folder
    seconds: float | None  # the study's seconds per run; None: equal epochs
    seeds: tuple[int, ...]  # the tuning seeds: every rate trains once with each
    rule: str = "best"  # how a rate is chosen (tuning.TUNE_RULES)

    def plan(self, grid: dict[str, tuple[int, ...]] | None = None) -> list[Planned]:
        """The sweep runs of `grid` (each optimizer's half-decade steps; None: the initial grid for all), seed
        by seed within each rate."""
        runs = []
        for optim in self.optims:
            default = resolve_config(dataclasses.replace(self.base, optim=optim)).lr
            for step in (grid or {}).get(optim, INITIAL_STEPS):
                lr = grid_lr(default, step)
                for index, seed in enumerate(self.seeds):
                    out = StudyFolder(self.out).sweep_run_dir(optim, lr, None if index == 0 else seed)
                    cfg = dataclasses.replace(self.base, optim=optim, lr=lr, seed=seed, out=str(out),
                                              **run_length(self.base, self.seconds, TUNE_FRACTION))
                    runs.append(Planned("sweep", cfg, lr_factor(step), step))
        return runs

    def choose(self, runs: list[Planned]) -> TuningRecord:
        """Each optimizer's sweep learning rate, by train's own rule (metrics.best_epoch): each run's best
        epoch, each rate's mean of them over the tuning seeds, then the learning rate whose mean the same rule
        puts first (highest validation score, ties: lower validation loss); under the rule `stable`, the best of
        the rates that leave a step of margin (tuning.py)."""
        column = selected_by(self.base.class_weights)
        by_rate: dict[tuple[str, float], list[Planned]] = {}
        for run in runs:
            by_rate.setdefault((run.cfg.optim, run.cfg.lr), []).append(run)
        rows = [_rate_row(rate_runs, self.base.class_weights, column) for rate_runs in by_rate.values()]
        chance = self._chance(column) if self.rule == "stable" else None
        chosen, floors = {}, {}
        for optim in self.optims:
            mine = [row for row in rows if row.optim == optim]
            top, best, floor = choose_rate(mine, column, chance)
            if floor is not None:
                floors[optim] = floor
            chosen[optim] = best.lr
            edges = (min(row.step for row in mine), max(row.step for row in mine))
            for row in mine:
                row.chosen, row.best_mean = row is best, row is top
                row.at_edge = row is best and row.step in edges
        first = runs[0].cfg
        length = (f"{first.epochs} epoch{'s' if first.epochs > 1 else ''}" if self.seconds is None
                  else f"{self.seconds * TUNE_FRACTION:g} s")
        rule = (", of the rates where every tuning seed trained at that rate and the next one up"
                if self.rule == "stable" else "")
        return TuningRecord(factors=[lr_factor(step) for step in INITIAL_STEPS], seed=self.seeds[0],
                            seeds=list(self.seeds), length=length, chosen=chosen, rows=rows, best_chosen_by=column,
                            selected_by=f"best validation {score_name(column)}"
                                        + (f", mean over {len(self.seeds)} seeds" if len(self.seeds) > 1 else "")
                                        + rule + ", as train picks best.pt; the test split is never read",
                            rule=self.rule, chance=chance, floors=floors)

    def _chance(self, column: str) -> float:
        """The validation score of guessing: the larger class's share, or 1 / classes for balanced accuracy."""
        split = read_split(self.base.data, "val")
        return 1 / len(split.classes) if column == "val_balanced_acc" else majority_share(split.labels)

    def tune(self, complete_all: Callable[[list[Planned]], bool],
             add: Callable[[list[Planned]], None]) -> TuningRecord | None:
        """The sweep, round by round (catsdogs/study/tuning.py), through the study's own `complete_all`:
        tuning.json's record, or None when a round was interrupted. The first round's runs are planned
        from the start (plan()); `add` is told of each later round's runs before they run."""
        ran: set[Path] = set()
        records: list[TuningRecord] = []  # each round's choice; the last one counts

        def run_round(grid: dict[str, tuple[int, ...]]) -> dict[str, int] | None:
            runs = self.plan(grid)
            todo = [run for run in runs if run.run_dir not in ran]
            if ran:
                add(todo)
            if not complete_all(todo):
                return None
            ran.update(run.run_dir for run in todo)
            records.append(self.choose(runs))
            # The grid grows around the best mean, whichever rate the rule chooses: a better one may lie beyond.
            return {row.optim: row.step for row in records[-1].rows if row.best_mean}

        sweep = sweep_in_rounds(self.optims, run_round)
        return None if sweep is None else _tuning_record(records[-1], sweep)


def choose_rate(mine: list[SweepRow], column: str, chance: float | None) -> tuple[SweepRow, SweepRow, float | None]:
    """One optimizer's sweep rows: the best mean, the rate chosen and the score counted as trained. Without
    `chance` (the rule best) the best mean is chosen and no score is counted; with it (the rule stable) each row's
    `stable` is set, and the best of the stable rows is chosen, or the best mean where no row is stable."""
    top = mine[_index_of_best([_scores(row) for row in mine], column)]
    if chance is None:
        return top, top, None
    floor = trained_floor((score for row in mine for score in row.seed_scores), chance)
    steady = stable_steps({row.step: row.seed_scores for row in mine}, floor)
    for row in mine:
        row.stable = row.step in steady
    candidates = [row for row in mine if row.stable]
    if not candidates:  # no rate leaves a margin: the best mean stands (the report says so)
        return top, top, floor
    return top, candidates[_index_of_best([_scores(row) for row in candidates], column)], floor


def _rate_row(runs: list[Planned], class_weights: str, column: str) -> SweepRow:
    """One learning rate's row: its runs' best-epoch scores, averaged over the tuning seeds."""
    bests, histories = [], []
    for run in runs:
        histories.append(read_history(run.run_dir))
        bests.append(best_row(histories[-1], class_weights))
    balanced = [best.get("val_balanced_acc", math.nan) for best in bests]
    first = runs[0]
    return SweepRow(optim=first.cfg.optim, lr=first.cfg.lr, factor=first.factor, step=first.step,
                    best_epoch=round(statistics.fmean(best["epoch"] for best in bests)),
                    best_val_acc=statistics.fmean(best["val_acc"] for best in bests),
                    best_val_balanced_acc=None if any(math.isnan(b) for b in balanced) else statistics.fmean(balanced),
                    best_val_loss=statistics.fmean(best["val_loss"] for best in bests),
                    final_train_loss=statistics.fmean(history["train_loss"][-1] for history in histories),
                    epochs=max(len(history["epoch"]) for history in histories),
                    seed_scores=[_scores_of(best, column) for best in bests])


def _scores_of(best: dict[str, float], column: str) -> float:
    """A run's best-epoch score as the study chooses by (accuracy where history.csv lacks the column)."""
    value = best.get(column, math.nan)
    return float(best["val_acc"] if math.isnan(value) else value)


def _scores(row: SweepRow) -> dict[str, float]:
    """A rate's mean scores, in the shape best_epoch reads."""
    return {"val_acc": row.best_val_acc, "val_loss": row.best_val_loss,
            "val_balanced_acc": math.nan if row.best_val_balanced_acc is None else row.best_val_balanced_acc}


def _index_of_best(scores: list[dict[str, float]], column: str) -> int:
    """The position of the scores best_epoch keeps (the first of equals)."""
    winner = best_epoch(scores, column)
    return next(index for index, item in enumerate(scores) if item is winner)


def _tuning_record(record: TuningRecord, sweep: Sweep) -> TuningRecord:
    """The last round's choice, with the grid, its limit and each optimizer's tuning effort added."""
    optims = {}
    for optim, steps in sweep.grid.items():
        chosen = next(row for row in record.rows if row.optim == optim and row.chosen)
        top = next(row for row in record.rows if row.optim == optim and row.best_mean)
        optims[optim] = TuningEffort(runs=len(steps) * len(record.seeds), lr=chosen.lr,
                                     factor=lr_factor(chosen.step), lowest_factor=lr_factor(min(steps)),
                                     highest_factor=lr_factor(max(steps)),
                                     extended=sorted(set(steps) - set(INITIAL_STEPS)), at_edge=sweep.at_edge(optim),
                                     at_limit=sweep.at_limit(optim), best_mean_lr=top.lr)
    for row in record.rows:
        row.at_limit = row.chosen and row.best_mean and optims[row.optim].at_limit
    grid = SweepGrid(step="half a decade (x10^0.5)", initial_steps=list(INITIAL_STEPS), limit_steps=LIMIT_STEPS,
                     limit_factors=[lr_factor(-LIMIT_STEPS), lr_factor(LIMIT_STEPS)])
    return dataclasses.replace(record, grid=grid, rounds=sweep.rounds, optims=optims)

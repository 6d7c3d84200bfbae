"""A study's learning-rate sweep: its runs, round by round, and each optimizer's rate chosen on validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from catsdogs.study.layout import StudyFolder, SweepGrid, SweepRow, TuningEffort, TuningRecord, score_name
from catsdogs.study.report import best_row
from catsdogs.study.study_run import Planned, run_length
from catsdogs.study.tuning import INITIAL_STEPS, LIMIT_STEPS, Sweep, grid_lr, lr_factor, sweep_in_rounds
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
    seed: int

    def plan(self, grid: dict[str, tuple[int, ...]] | None = None) -> list[Planned]:
        """The sweep runs of `grid` (each optimizer's half-decade steps; None: the initial grid for all)."""
        runs = []
        for optim in self.optims:
            default = resolve_config(dataclasses.replace(self.base, optim=optim)).lr
            for step in (grid or {}).get(optim, INITIAL_STEPS):
                lr = grid_lr(default, step)
                out = StudyFolder(self.out).sweep_run_dir(optim, lr)
                cfg = dataclasses.replace(self.base, optim=optim, lr=lr, seed=self.seed, out=str(out),
                                          **run_length(self.base, self.seconds, TUNE_FRACTION))
                runs.append(Planned("sweep", cfg, lr_factor(step), step))
        return runs

    def choose(self, runs: list[Planned]) -> TuningRecord:
        """Each optimizer's best sweep learning rate, by train's own rule (metrics.best_epoch): each run's
        best epoch, then the learning rate whose best epoch the same rule puts first."""
        column = selected_by(self.base.class_weights)
        rows, bests = [], []
        for run in runs:
            history = read_history(run.run_dir)
            best = best_row(history, self.base.class_weights)
            balanced = best.get("val_balanced_acc", math.nan)
            bests.append(best)
            rows.append(SweepRow(optim=run.cfg.optim, lr=run.cfg.lr, factor=run.factor,
                                 best_epoch=int(best["epoch"]), best_val_acc=best["val_acc"],
                                 best_val_balanced_acc=None if math.isnan(balanced) else balanced,
                                 best_val_loss=best["val_loss"], final_train_loss=history["train_loss"][-1],
                                 epochs=len(history["epoch"])))
        chosen = {}
        for optim in self.optims:
            picked = [index for index, row in enumerate(rows) if row.optim == optim]
            winner = best_epoch([bests[index] for index in picked], column)
            best = next(rows[index] for index in picked if bests[index] is winner)
            chosen[optim] = best.lr
            steps = [runs[index].step for index in picked]
            for index in picked:
                rows[index].step = runs[index].step
                rows[index].chosen = rows[index] is best
                rows[index].at_edge = rows[index] is best and runs[index].step in (min(steps), max(steps))
        length = (f"{runs[0].cfg.epochs} epoch{'s' if runs[0].cfg.epochs > 1 else ''}" if self.seconds is None
                  else f"{self.seconds * TUNE_FRACTION:g} s")
        return TuningRecord(factors=[lr_factor(step) for step in INITIAL_STEPS], seed=runs[0].cfg.seed,
                            length=length, chosen=chosen, rows=rows, best_chosen_by=column,
                            selected_by=f"best validation {score_name(column)}, as train picks best.pt; the test "
                                        "split is never read")

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
            return {row.optim: row.step for row in records[-1].rows if row.chosen}

        sweep = sweep_in_rounds(self.optims, run_round)
        return None if sweep is None else _tuning_record(records[-1], sweep)


def _tuning_record(record: TuningRecord, sweep: Sweep) -> TuningRecord:
    """The last round's choice, with the grid, its limit and each optimizer's tuning effort added."""
    optims = {}
    for optim, steps in sweep.grid.items():
        optims[optim] = TuningEffort(runs=len(steps), lr=record.chosen[optim], factor=lr_factor(sweep.chosen[optim]),
                                     lowest_factor=lr_factor(min(steps)), highest_factor=lr_factor(max(steps)),
                                     extended=sorted(set(steps) - set(INITIAL_STEPS)), at_edge=sweep.at_edge(optim),
                                     at_limit=sweep.at_limit(optim))
    for row in record.rows:
        row.at_limit = row.chosen and optims[row.optim].at_limit
    grid = SweepGrid(step="half a decade (x10^0.5)", initial_steps=list(INITIAL_STEPS), limit_steps=LIMIT_STEPS,
                     limit_factors=[lr_factor(-LIMIT_STEPS), lr_factor(LIMIT_STEPS)])
    return dataclasses.replace(record, grid=grid, rounds=sweep.rounds, optims=optims)

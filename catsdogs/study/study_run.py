"""One run of a study, a sweep run or a study run: its plan, its way to its end, its test accuracy."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from catsdogs.errors import CatsdogsError
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.run_report import metrics_out_of_date
from catsdogs.study.opening import epochs_grow
from catsdogs.study.report import best_row
from catsdogs.training.config import TrainConfig, settings_with
from catsdogs.training.runs import RunFolder, read_history
from catsdogs.training.selection import selected_by
from catsdogs.training.train import resolve_config, train

EPOCH_CAP = 10_000  # epochs allowed under a seconds budget: the clock ends every run long before
DONE = ("finished", "early-stopped", "time-budget")

Log = Callable[[str], None]


@dataclass
class Planned:
    """A run the study needs: a sweep run or a study run, with its full config."""

    kind: str  # sweep | study
    cfg: TrainConfig
    factor: float = 1.0  # a sweep run's learning rate over the optimizer's default
    step: int = 0  # the same, in half-decade steps (catsdogs/study/tuning.py)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def label(self) -> str:
        if self.kind == "sweep":
            return f"sweep {self.cfg.optim} lr {self.cfg.lr:g} seed {self.cfg.seed}"
        return f"{self.cfg.optim} seed {self.cfg.seed}"


def run_length(cfg: TrainConfig, seconds: float | None, share: float = 1.0) -> dict[str, Any]:
    """The settings that make a run `share` of the study's budget: epochs, or seconds of wall time."""
    if seconds is None:
        return {"epochs": max(1, round(cfg.epochs * share))}
    return {"epochs": EPOCH_CAP, "time_budget": seconds * share / 60.0}


class _RunLog:
    """Keeps a run's own log lines for its train.log; only a stop notice goes to the console at once."""

    def __init__(self, echo: Log) -> None:
        self.lines: list[str] = []
        self.echo = echo

    def __call__(self, line: str) -> None:
        self.lines.append(line.strip("\n"))
        if line.lstrip().startswith("stopping"):
            self.echo(line.strip())

    def save(self, run_dir: Path) -> None:
        if run_dir.is_dir():
            with (run_dir / "train.log").open("a", encoding="utf-8") as handle:
                handle.write("\n".join(self.lines) + "\n")


def _status(run_dir: Path) -> str | None:
    try:
        status = RunFolder(run_dir).read_status()
    except CatsdogsError:
        return None
    return status.status if status is not None else None


def _settings_differ(run: Planned) -> str | None:
    """Name a setting in which the run folder's config differs from the planned run, if any."""
    folder = RunFolder(run.run_dir)
    if not folder.config_path.is_file():
        return None  # a folder killed before its first file: nothing in it to keep
    try:
        # A setting added to catsdogs after the run was made counts as its default, as a resume reads it.
        saved = {**TrainConfig().to_dict(), **folder.read_config()}
    except yaml.YAMLError:
        return f"{folder.config_path.name} (unreadable)"
    wanted = resolve_config(run.cfg)
    free = settings_with("free")  # a re-run may change them: they never change what a run learns
    grows = ("epochs",) if epochs_grow(saved, wanted) else ()  # a grown study continues the run (opening.py)
    return next((k for k, v in wanted.to_dict().items()
                 if k not in (*free, *grows, "out") and saved.get(k) != v), None)


def _finished(run: Planned) -> bool:
    """Whether the run's folder holds it ended at the planned length (fewer epochs, in a grown study, are not)."""
    try:
        status = RunFolder(run.run_dir).read_status()
    except CatsdogsError:
        return False
    if status is None or status.status not in DONE or not RunFolder(run.run_dir).best_path.is_file():
        return False
    return not (status.status == "finished" and status.epochs_done is not None and status.epochs_done < run.cfg.epochs)


def complete_run(run: Planned, progress: bool, echo: Log) -> str:
    """Bring one run to its end: 'done earlier', 'resumed', 'trained' or 'interrupted'."""
    run_dir = run.run_dir
    folder = RunFolder(run_dir)
    differs = _settings_differ(run) if run_dir.is_dir() else None
    if differs:
        echo(f"{run.label}: {run_dir} holds a run with another {differs}; training it again")
        shutil.rmtree(run_dir)
    elif _finished(run):
        return "done earlier"
    log, how = _RunLog(echo), "trained"
    if folder.last_path.is_file():
        how = "resumed"
        free = {k: getattr(run.cfg, k) for k in settings_with("free")}  # this re-run's speed and logging
        free["epochs"] = run.cfg.epochs  # more, in a grown study
        result = train(None, resume=run_dir, flags=free, progress=progress, log=log)
        if result.status == "nothing-to-do" and not folder.best_path.is_file():
            how = "trained"  # ended without its best checkpoint: nothing worth keeping
    if how == "trained":
        shutil.rmtree(run_dir, ignore_errors=True)  # a folder without last.pt holds nothing to resume
        result = train(run.cfg, progress=progress, log=log)
    log.save(run_dir)
    return "interrupted" if result.status == "interrupted" else how


def complete_and_test(run: Planned) -> str:
    """An executor's whole job for one run: bring it to its end and test it, writing only into its folder."""
    how = complete_run(run, False, print)
    if how != "interrupted" and run.kind == "study":
        accuracy_on_test(run.run_dir, run.cfg.device, False)
    return how


def finished_earlier(run: Planned) -> bool:
    """True when the run's folder holds it finished, so no worker need start for it."""
    return _finished(run) and not _settings_differ(run)


def accuracy_on_test(run_dir: Path, device: str, progress: bool) -> float:
    """The best checkpoint's test accuracy, evaluated once and kept in the run's metrics.json."""
    folder = RunFolder(run_dir)
    if folder.metrics_path.is_file() and not metrics_out_of_date(run_dir):
        try:
            return float(folder.read_metrics()["accuracy"])
        except (CatsdogsError, ValueError, KeyError):
            pass  # damaged: evaluate again
    return float(evaluate_run(run_dir, split="test", checkpoint="best", device=device,
                              progress=progress).metrics["accuracy"])


def result_line(run: Planned, how: str, test_acc: float | None) -> str:
    """The console's line for a run that ended: its scores, epochs and time, and how it got there."""
    history = read_history(run.run_dir)
    epochs, wall = len(history["epoch"]), sum(history["seconds"])
    status = _status(run.run_dir) or "finished"
    parts = [f"{run.label}:"]
    if test_acc is not None:
        parts.append(f"test acc {test_acc:.4f},")
    best = best_row(history, run.cfg.class_weights)  # the epoch train kept as best.pt
    balanced = best.get("val_balanced_acc", math.nan)
    if selected_by(run.cfg.class_weights) == "val_balanced_acc" and not math.isnan(balanced):
        parts.append(f"best val balanced acc {balanced:.4f} (acc {best['val_acc']:.4f}, epoch {int(best['epoch'])}),")
    else:
        parts.append(f"best val acc {best['val_acc']:.4f} (epoch {int(best['epoch'])}),")
    parts.append(f"final train loss {history['train_loss'][-1]:.4f}, "
                 f"{epochs} epoch{'s' if epochs > 1 else ''} ({status}) in {wall:.{1 if wall < 10 else 0}f} s")
    if how != "trained":
        parts.append(f"[{how}]")
    return " ".join(parts)

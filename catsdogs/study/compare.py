"""Optimizer studies: train every (optimizer, seed) pair alike, evaluate each on test, resume, report."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from catsdogs.data.cache import read_split
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.progress import progress_bar
from catsdogs.study.layout import StudyFolder, Summary, score_name
from catsdogs.study.lr_sweep import LrSweep
from catsdogs.study.opening import open_study, study_identity
from catsdogs.study.report import write_report
from catsdogs.study.study_run import (Log, Planned, accuracy_on_test, complete_and_test, complete_run, finished_earlier,
                                      result_line, run_length)
from catsdogs.study.tuning import TUNE_RULES
from catsdogs.training.config import TrainConfig, declared_settings
from catsdogs.training.hardware import select_device
from catsdogs.training.optim import get_optimizer_spec, load_optimizer_plugins
from catsdogs.training.placement import threads_for_runs
from catsdogs.training.selection import selected_by
from catsdogs.training.train import resolve_config

DEFAULT_OPTIMS = ("vanilla-sgd", "minibatch-sgd", "momentum", "adam")
DEFAULT_STUDY_DIR = Path("study")


@dataclass
class StudySpec:
    """One study: the optimizers and seeds to compare; `base` holds what every run shares."""

    base: TrainConfig
    optims: tuple[str, ...] = DEFAULT_OPTIMS
    seeds: int = 3  # seeds base.seed, base.seed + 1, ...
    budget: str = "epochs"  # epochs | seconds:S
    tune_lr: bool = False
    tune_seeds: int = 1  # seeds each sweep rate trains with (base.seed, base.seed + 1, ...); its score is their mean
    tune_rule: str = "best"  # how the sweep chooses a rate (catsdogs/study/tuning.py TUNE_RULES)
    lrs: dict[str, float] = field(default_factory=dict)  # given learning rates by optimizer (not with tune_lr)
    target_acc: float = 0.70  # "epochs to reach this validation accuracy" in the report
    out: Path = DEFAULT_STUDY_DIR
    # How the runs are run, never what they learn (so not in study.json): see catsdogs/study/executors.py.
    jobs: int = 1  # runs at once, each in a process of its own
    threads_per_run: int | None = None  # None: the usable CPUs / jobs with --jobs; PyTorch's default alone
    ray: str | None = None  # a Ray cluster's address (HOST:PORT, auto, local): one Ray task per run


@dataclass
class StudyResult:
    out: Path
    status: str  # complete | interrupted
    summary: Summary | None = None

    @property
    def report(self) -> Path:
        return StudyFolder(self.out).report_path


def parse_optims(text: str | None) -> tuple[str, ...]:
    """'adam,momentum' -> ('adam', 'momentum'), refusing unknown and repeated names; None: the defaults."""
    if text is None:
        return DEFAULT_OPTIMS
    load_optimizer_plugins()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        get_optimizer_spec(name)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--optims names {', '.join(repeated)} more than once")
    if not names:
        raise UsageError("--optims needs at least one optimizer name, e.g. adam,momentum")
    return names


def parse_budget(text: str) -> float | None:
    """`epochs` -> None (equal epochs); `seconds:S` -> S seconds of wall time per run."""
    if text == "epochs":
        return None
    kind, _, value = text.partition(":")
    try:
        seconds = float(value) if kind == "seconds" else -1.0
    except ValueError:
        seconds = -1.0
    if seconds > 0 and math.isfinite(seconds):
        return seconds
    raise UsageError(f"--budget {text!r}: use epochs, or seconds:S with S > 0 (e.g. seconds:600)")


def parse_lrs(text: str | None) -> dict[str, float]:
    """'adam=0.0003,momentum=0.01' -> {'adam': 0.0003, 'momentum': 0.01}; None: none given."""
    lrs: dict[str, float] = {}
    if text is None:
        return lrs
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        try:
            lr = float(value) if sep and name else math.nan
        except ValueError:
            lr = math.nan
        if not (lr > 0 and math.isfinite(lr)):
            raise UsageError(f"--lrs {text!r}: give OPTIM=LR pairs with LR > 0, e.g. adam=0.0003,momentum=0.01")
        if name in lrs:
            raise UsageError(f"--lrs names {name} more than once")
        lrs[name] = lr
    return lrs


def _check(spec: StudySpec) -> tuple[TrainConfig, float | None]:
    """Validate everything before the study folder is touched; return the shared config and budget."""
    load_optimizer_plugins()
    # The study chooses the per-run settings that default to None, so a config file must not set them for
    # all runs at once; the seed, which has a default, is where the study's seeds start.
    for declared in declared_settings().values():
        if declared.per_run and declared.default is None and getattr(spec.base, declared.name) is not None:
            raise UsageError(f"a study sets {declared.name} for each run itself ({declared.per_run}), so it "
                             "cannot come from the config file; remove it there")
    for name in spec.optims:
        get_optimizer_spec(name)
    if not spec.optims or len(set(spec.optims)) != len(spec.optims):
        raise UsageError(f"--optims must name distinct optimizers, got {','.join(spec.optims) or 'none'}")
    if spec.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {spec.seeds}")
    if spec.tune_seeds < 1:
        raise UsageError(f"--tune-seeds must be at least 1, got {spec.tune_seeds}")
    if spec.tune_seeds > 1 and not spec.tune_lr:
        raise UsageError("--tune-seeds sets the seeds of the learning-rate sweep: add --tune-lr")
    if spec.tune_rule not in TUNE_RULES:
        raise UsageError(f"--tune-rule is one of {', '.join(TUNE_RULES)}, got {spec.tune_rule!r}")
    if spec.tune_rule != "best" and not spec.tune_lr:
        raise UsageError("--tune-rule sets how the learning-rate sweep chooses: add --tune-lr")
    if spec.lrs and spec.tune_lr:
        raise UsageError("--lrs gives the learning rates and --tune-lr chooses them: use one of the two")
    stray = [name for name in spec.lrs if name not in spec.optims]
    if stray:
        raise UsageError(f"--lrs names {', '.join(stray)}, which the study does not compare "
                         f"(--optims {','.join(spec.optims)})")
    if not 0 < spec.target_acc <= 1:
        raise UsageError(f"--target-acc is an accuracy between 0 and 1, got {spec.target_acc}")
    seconds = parse_budget(spec.budget)
    for name in spec.optims:
        resolve_config(dataclasses.replace(spec.base, optim=name))
    data = Path(spec.base.data)  # as the user typed it, so messages name it as `train` does
    read_split(data, "val", read_split(data, "train").classes)
    if not (data / "test").is_dir():  # listed only, never read, until the study evaluates
        raise CatsdogsError(f"{data} has no test/ folder: the study evaluates every run on it")
    # Absolute from here on: study.json and each run's config.yaml then name the folder from any working folder.
    return dataclasses.replace(spec.base, data=str(data.resolve())), seconds


def _executor(spec: StudySpec, base: TrainConfig, setup: Callable[[], None] | None) -> Any:
    """None to run one run after another here; else what runs them elsewhere (checked before any run)."""
    if spec.threads_per_run is not None and spec.threads_per_run < 1:
        raise UsageError(f"--threads-per-run must be at least 1, got {spec.threads_per_run}")
    if spec.ray is not None:
        if spec.jobs != 1:
            raise UsageError("--jobs and --ray do not go together: with --ray the cluster's resources decide how "
                             "many runs run at once")
        from catsdogs.study.ray_runner import RayExecutor

        return RayExecutor(spec.ray, base.device, spec.threads_per_run, [Path(base.data), Path(spec.out).resolve()],
                           setup)
    if spec.jobs == 1:
        return None
    from catsdogs.study.executors import ProcessExecutor, plan_slots

    return ProcessExecutor(plan_slots(spec.jobs, spec.threads_per_run, base.device), setup)


def _plan_study(base: TrainConfig, spec: StudySpec, seconds: float | None, seeds: list[int],
                lrs: dict[str, float]) -> list[Planned]:
    """Seed by seed, so a study cut short still holds complete pairs."""
    return [Planned("study", dataclasses.replace(base, optim=optim, seed=seed, lr=lrs.get(optim),
                                                 out=str(StudyFolder(spec.out).run_dir(optim, seed)),
                                                 **run_length(base, seconds)))
            for seed in seeds for optim in spec.optims]


class _StudyBar:
    """The overall bar: runs done of all runs, and time left estimated from the runs trained so far."""

    def __init__(self, runs: list[Planned], show: bool, log: Log) -> None:
        self.runs, self.log, self.done = runs, log, 0
        self.seconds: dict[tuple[str, str], list[float]] = {}
        self.bar = progress_bar(
            total=len(runs), desc="study", unit="run", show=show, dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]")

    def add(self, runs: list[Planned]) -> None:
        """Runs the study found it needs on the way (a widened sweep), to be run next."""
        self.runs[self.done:self.done] = runs
        self.bar.total += len(runs)
        self.bar.refresh()

    def echo(self, line: str) -> None:
        with tqdm.external_write_mode():
            self.log(line)

    def finished(self, run: Planned, seconds: float | None, line: str) -> None:
        """Count a run; `seconds` is its cost when it trained now (None when it was done earlier)."""
        self.done += 1
        if seconds is not None:
            self.seconds.setdefault((run.kind, run.cfg.optim), []).append(seconds)
        self.echo(f"[{self.done}/{len(self.runs)}] {line}")
        self.bar.update()
        left = self._seconds_left()
        if left is not None:
            self.bar.set_postfix_str(f"about {_clock(left)} left", refresh=True)

    def _seconds_left(self) -> float | None:
        if not self.seconds:
            return None
        every = [s for values in self.seconds.values() for s in values]
        total = 0.0
        for run in self.runs[self.done:]:
            same_kind = [s for (kind, _), values in self.seconds.items() if kind == run.kind for s in values]
            total += statistics.fmean(self.seconds.get((run.kind, run.cfg.optim)) or same_kind or every)
        return total

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _StudyRunner:
    """Brings the study's runs to their end, here one after another or through the executor, each counted on the bar."""

    def __init__(self, spec: StudySpec, base: TrainConfig, executor: Any, bar: _StudyBar, progress: bool) -> None:
        self.threads_per_run, self.base, self.executor, self.bar, self.progress = (
            spec.threads_per_run, base, executor, bar, progress)

    def tune_lrs(self, sweep: LrSweep) -> dict[str, float] | None:
        """Each optimizer's learning rate, from the sweep (recorded in tuning.json); None when it was interrupted."""
        tuning = sweep.tune(self.complete_all, self.bar.add)
        if tuning is None:
            return None
        StudyFolder(sweep.out).write_tuning(tuning)
        score = score_name(selected_by(self.base.class_weights))
        rule = " with a step of margin (--tune-rule stable)" if tuning.rule == "stable" else ""
        self.bar.echo(f"learning rates chosen on validation {score}{rule}: "
                      + ", ".join(f"{optim} {lr:g}" for optim, lr in tuning.chosen.items()))
        return tuning.chosen

    def complete_all(self, runs: list[Planned]) -> bool:
        """Bring every run to its end and test each study run; False when the study was interrupted."""
        if self.executor is None:
            with threads_for_runs(self.threads_per_run):
                return all(self._complete(run) for run in runs)
        earlier = [run for run in runs if finished_earlier(run)]
        for run in earlier:
            self._finished(run, "done earlier", 0.0)
        todo = [run for run in runs if run not in earlier]
        if self.executor.run_all(complete_and_test, todo, self._finished, label=lambda run: run.label):
            return True
        self.bar.echo("study interrupted; run the same command again to continue (finished runs are kept, the "
                      "interrupted ones resume from their last step)")
        return False

    def _complete(self, run: Planned) -> bool:
        """A run run here: bring it to its end, test it and count it."""
        started = time.perf_counter()
        how = complete_run(run, self.progress, self.bar.echo)
        if how == "interrupted":
            self.bar.echo(f"study interrupted in {run.label}; run the same command again to continue "
                          "(finished runs are kept, this one resumes from its last step)")
            return False
        test_acc = accuracy_on_test(run.run_dir, self.base.device, self.progress) if run.kind == "study" else None
        self.bar.finished(run, None if how == "done earlier" else time.perf_counter() - started,
                          result_line(run, how, test_acc))
        return True

    def _finished(self, run: Planned, how: str, seconds: float) -> bool:
        """A run an executor ran: the driver learns its results from its files."""
        if how == "interrupted":
            return False
        test_acc = accuracy_on_test(run.run_dir, self.base.device, False) if run.kind == "study" else None
        self.bar.finished(run, None if how == "done earlier" else seconds, result_line(run, how, test_acc))
        return True

    def close(self) -> None:
        self.bar.close()
        if self.executor is not None:
            self.executor.close()


def run_study(spec: StudySpec, force: bool = False, progress: bool = True, log: Log = print,
              process_setup: Callable[[], None] | None = None) -> StudyResult:
    """Train, evaluate and report every (optimizer, seed) pair of `spec` into `spec.out`.

    Seed k gives every optimizer the same initial weights and data order, so the runs of a seed
    differ by the optimizer alone. A re-run with the same arguments skips finished runs and
    resumes unfinished ones; different arguments are refused unless `force` (which deletes the
    old study). With `tune_lr`, a short sweep picks each optimizer's learning rate on the
    validation split first. `spec.jobs` or `spec.ray` run the runs in other processes (each first
    calls `process_setup`); a run's results are the same whichever ran it, at equal threads.
    """
    base, seconds = _check(spec)
    executor = _executor(spec, base, process_setup)
    spec = dataclasses.replace(spec, out=Path(spec.out))
    seeds = [base.seed + k for k in range(spec.seeds)]
    select_device(base.device)  # a --device this machine lacks is told before the study folder is made
    identity = study_identity(list(spec.optims), seeds, spec.budget, spec.tune_lr, base, spec.tune_seeds, spec.lrs,
                              spec.tune_rule)
    open_study(spec.out, identity, base, force, log)
    tune_seeds = tuple(base.seed + k for k in range(spec.tune_seeds))
    sweep = LrSweep(base, spec.optims, spec.out, seconds, tune_seeds, spec.tune_rule) if spec.tune_lr else None
    # The bar holds the sweep's first round and the study's runs from the start; later rounds add theirs.
    first = (sweep.plan() if sweep is not None else []) + _plan_study(base, spec, seconds, seeds, spec.lrs)
    runner = _StudyRunner(spec, base, executor, _StudyBar(first, progress, log), progress)
    try:
        lrs = runner.tune_lrs(sweep) if sweep is not None else spec.lrs
        if lrs is None or not runner.complete_all(_plan_study(base, spec, seconds, seeds, lrs)):
            return StudyResult(spec.out, "interrupted")
    finally:
        runner.close()
    return _report(spec, log)


def _report(spec: StudySpec, log: Log) -> StudyResult:
    """Write the report from the run folders' files alone."""
    summary = write_report(spec.out, spec.target_acc)
    folder = StudyFolder(spec.out)
    log(f"wrote {folder.report_path} (and as one page, {folder.page_path}), {folder.summary_path} "
        "and the figures beside them")
    return StudyResult(spec.out, "complete", summary)

"""Optimizer studies: train every (optimizer, seed) pair alike, evaluate each on test, resume, report."""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm import tqdm

from catsdogs.data.cache import read_split
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.run_report import metrics_out_of_date
from catsdogs.progress import progress_bar
from catsdogs.study.layout import (StudyFolder, Summary, SweepGrid, SweepRow, TuningEffort,
                                   TuningRecord)
from catsdogs.study.opening import epochs_grow, open_study, study_identity
from catsdogs.study.report import best_row, score_name, write_report
from catsdogs.study.tuning import INITIAL_STEPS, LIMIT_STEPS, Sweep, grid_lr, lr_factor, sweep_in_rounds
from catsdogs.training.config import TrainConfig, declared_settings, settings_with
from catsdogs.training.hardware import select_device
from catsdogs.training.optim import get_optimizer_spec, load_optimizer_plugins
from catsdogs.training.placement import threads_for_runs
from catsdogs.training.runs import RunFolder, read_history
from catsdogs.training.selection import best_epoch, selected_by
from catsdogs.training.train import resolve_config, train

DEFAULT_OPTIMS = ("vanilla-sgd", "minibatch-sgd", "momentum", "adam")
DEFAULT_STUDY_DIR = Path("study")
TUNE_FRACTION = 0.25  # the share of the epochs (or seconds) a sweep run gets
EPOCH_CAP = 10_000  # epochs allowed under a seconds budget: the clock ends every run long before
DONE = ("finished", "early-stopped", "time-budget")

Log = Callable[[str], None]


@dataclass
class StudySpec:
    """One study: the optimizers and seeds to compare; `base` holds what every run shares."""

    base: TrainConfig
    optims: tuple[str, ...] = DEFAULT_OPTIMS
    seeds: int = 3  # seeds base.seed, base.seed + 1, ...
    budget: str = "epochs"  # epochs | seconds:S
    tune_lr: bool = False
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


@dataclass
class _Planned:
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
            return f"sweep {self.cfg.optim} lr {self.cfg.lr:g}"
        return f"{self.cfg.optim} seed {self.cfg.seed}"


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


def _length(cfg: TrainConfig, seconds: float | None, share: float = 1.0) -> dict[str, Any]:
    if seconds is None:
        return {"epochs": max(1, round(cfg.epochs * share))}
    return {"epochs": EPOCH_CAP, "time_budget": seconds * share / 60.0}


def _plan_sweep(base: TrainConfig, spec: StudySpec, seconds: float | None, seed: int,
                grid: dict[str, tuple[int, ...]] | None = None) -> list[_Planned]:
    """The sweep runs of `grid` (each optimizer's half-decade steps; None: the initial grid for all)."""
    runs = []
    for optim in spec.optims:
        default = resolve_config(dataclasses.replace(base, optim=optim)).lr
        for step in (grid or {}).get(optim, INITIAL_STEPS):
            lr = grid_lr(default, step)
            out = StudyFolder(spec.out).sweep_run_dir(optim, lr)
            cfg = dataclasses.replace(base, optim=optim, lr=lr, seed=seed, out=str(out),
                                      **_length(base, seconds, TUNE_FRACTION))
            runs.append(_Planned("sweep", cfg, lr_factor(step), step))
    return runs


def _plan_study(base: TrainConfig, spec: StudySpec, seconds: float | None, seeds: list[int],
                lrs: dict[str, float]) -> list[_Planned]:
    """Seed by seed, so a study cut short still holds complete pairs."""
    return [_Planned("study", dataclasses.replace(base, optim=optim, seed=seed, lr=lrs.get(optim),
                                                  out=str(StudyFolder(spec.out).run_dir(optim, seed)),
                                                  **_length(base, seconds)))
            for seed in seeds for optim in spec.optims]


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


def _settings_differ(run: _Planned) -> str | None:
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


def _finished(run: _Planned) -> bool:
    """Whether the run's folder holds it ended at the planned length (fewer epochs, in a grown study, are not)."""
    try:
        status = RunFolder(run.run_dir).read_status()
    except CatsdogsError:
        return False
    if status is None or status.status not in DONE or not RunFolder(run.run_dir).best_path.is_file():
        return False
    return not (status.status == "finished" and status.epochs_done is not None and status.epochs_done < run.cfg.epochs)


def _complete(run: _Planned, progress: bool, echo: Log) -> str:
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


def complete_and_test(run: _Planned) -> str:
    """An executor's whole job for one run: bring it to its end and test it, writing only into its folder."""
    how = _complete(run, False, print)
    if how != "interrupted" and run.kind == "study":
        _test_accuracy(run.run_dir, run.cfg.device, False)
    return how


def _done_earlier(run: _Planned) -> bool:
    """True when the run's folder holds it finished, so no worker need start for it."""
    return _finished(run) and not _settings_differ(run)


def _test_accuracy(run_dir: Path, device: str, progress: bool) -> float:
    """The best checkpoint's test accuracy, evaluated once and kept in the run's metrics.json."""
    folder = RunFolder(run_dir)
    if folder.metrics_path.is_file() and not metrics_out_of_date(run_dir):
        try:
            return float(folder.read_metrics()["accuracy"])
        except (CatsdogsError, ValueError, KeyError):
            pass  # damaged: evaluate again
    return float(evaluate_run(run_dir, split="test", checkpoint="best", device=device,
                              progress=progress).metrics["accuracy"])


def _choose_lrs(runs: list[_Planned], spec: StudySpec, seconds: float | None) -> TuningRecord:
    """Each optimizer's best sweep learning rate, by train's own rule (metrics.best_epoch): each run's
    best epoch, then the learning rate whose best epoch the same rule puts first."""
    column = selected_by(spec.base.class_weights)
    rows, bests = [], []
    for run in runs:
        history = read_history(run.run_dir)
        best = best_row(history, spec.base.class_weights)
        balanced = best.get("val_balanced_acc", math.nan)
        bests.append(best)
        rows.append(SweepRow(optim=run.cfg.optim, lr=run.cfg.lr, factor=run.factor, best_epoch=int(best["epoch"]),
                             best_val_acc=best["val_acc"],
                             best_val_balanced_acc=None if math.isnan(balanced) else balanced,
                             best_val_loss=best["val_loss"], final_train_loss=history["train_loss"][-1],
                             epochs=len(history["epoch"])))
    chosen = {}
    for optim in spec.optims:
        picked = [index for index, row in enumerate(rows) if row.optim == optim]
        winner = best_epoch([bests[index] for index in picked], column)
        best = next(rows[index] for index in picked if bests[index] is winner)
        chosen[optim] = best.lr
        steps = [runs[index].step for index in picked]
        for index in picked:
            rows[index].step = runs[index].step
            rows[index].chosen = rows[index] is best
            rows[index].at_edge = rows[index] is best and runs[index].step in (min(steps), max(steps))
    length = (f"{runs[0].cfg.epochs} epoch{'s' if runs[0].cfg.epochs > 1 else ''}" if seconds is None
              else f"{seconds * TUNE_FRACTION:g} s")
    return TuningRecord(factors=[lr_factor(step) for step in INITIAL_STEPS], seed=runs[0].cfg.seed, length=length,
                        chosen=chosen, rows=rows, best_chosen_by=column,
                        selected_by=f"best validation {score_name(column)}, as train picks best.pt; the test split is "
                                    "never read")


def _tune_lrs(base: TrainConfig, spec: StudySpec, seconds: float | None, seed: int,
              complete_all: Callable[[list[_Planned]], bool], bar: "_StudyBar") -> TuningRecord | None:
    """The learning-rate sweep, round by round (catsdogs/study/tuning.py), through the study's own
    `complete_all`: tuning.json's record, or None when a round was interrupted. The bar holds the first
    round's runs from the start; later rounds add theirs."""
    ran: set[Path] = set()
    records: list[TuningRecord] = []  # each round's choice; the last one counts

    def run_round(grid: dict[str, tuple[int, ...]]) -> dict[str, int] | None:
        runs = _plan_sweep(base, spec, seconds, seed, grid)
        todo = [run for run in runs if run.run_dir not in ran]
        if ran:
            bar.add(todo)
        if not complete_all(todo):
            return None
        ran.update(run.run_dir for run in todo)
        records.append(_choose_lrs(runs, spec, seconds))
        return {row.optim: row.step for row in records[-1].rows if row.chosen}

    sweep = sweep_in_rounds(spec.optims, run_round)
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


class _StudyBar:
    """The overall bar: runs done of all runs, and time left estimated from the runs trained so far."""

    def __init__(self, runs: list[_Planned], show: bool, log: Log) -> None:
        self.runs, self.log, self.done = runs, log, 0
        self.seconds: dict[tuple[str, str], list[float]] = {}
        self.bar = progress_bar(
            total=len(runs), desc="study", unit="run", show=show, dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]")

    def add(self, runs: list[_Planned]) -> None:
        """Runs the study found it needs on the way (a widened sweep), to be run next."""
        self.runs[self.done:self.done] = runs
        self.bar.total += len(runs)
        self.bar.refresh()

    def echo(self, line: str) -> None:
        with tqdm.external_write_mode():
            self.log(line)

    def finished(self, run: _Planned, seconds: float | None, line: str) -> None:
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


def _result_line(run: _Planned, how: str, test_acc: float | None) -> str:
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
    open_study(spec.out, study_identity(list(spec.optims), seeds, spec.budget, spec.tune_lr, base), base, force, log)
    sweep = _plan_sweep(base, spec, seconds, seeds[0]) if spec.tune_lr else []  # its first round
    bar = _StudyBar(sweep + _plan_study(base, spec, seconds, seeds, {}), progress, log)

    def complete(run: _Planned) -> bool:
        started = time.perf_counter()
        how = _complete(run, progress, bar.echo)
        if how == "interrupted":
            bar.echo(f"study interrupted in {run.label}; run the same command again to continue "
                     "(finished runs are kept, this one resumes from its last step)")
            return False
        test_acc = _test_accuracy(run.run_dir, base.device, progress) if run.kind == "study" else None
        bar.finished(run, None if how == "done earlier" else time.perf_counter() - started,
                     _result_line(run, how, test_acc))
        return True

    def finished(run: _Planned, how: str, seconds: float) -> bool:
        """A run an executor ran: the driver learns its results from its files."""
        if how == "interrupted":
            return False
        test_acc = _test_accuracy(run.run_dir, base.device, False) if run.kind == "study" else None
        bar.finished(run, None if how == "done earlier" else seconds, _result_line(run, how, test_acc))
        return True

    def complete_all(runs: list[_Planned]) -> bool:
        if executor is None:
            with threads_for_runs(spec.threads_per_run):
                return all(complete(run) for run in runs)
        earlier = [run for run in runs if _done_earlier(run)]
        for run in earlier:
            finished(run, "done earlier", 0.0)
        todo = [run for run in runs if run not in earlier]
        if executor.run_all(complete_and_test, todo, finished, label=lambda run: run.label):
            return True
        bar.echo("study interrupted; run the same command again to continue (finished runs are kept, the "
                 "interrupted ones resume from their last step)")
        return False

    lrs: dict[str, float] = {}
    try:
        if sweep:
            tuning = _tune_lrs(base, spec, seconds, seeds[0], complete_all, bar)
            if tuning is None:
                return StudyResult(spec.out, "interrupted")
            StudyFolder(spec.out).write_tuning(tuning)
            lrs = tuning.chosen
            bar.echo(f"learning rates chosen on validation {score_name(selected_by(base.class_weights))}: "
                     + ", ".join(f"{optim} {lr:g}" for optim, lr in lrs.items()))
        if not complete_all(_plan_study(base, spec, seconds, seeds, lrs)):
            return StudyResult(spec.out, "interrupted")
    finally:
        bar.close()
        if executor is not None:
            executor.close()
    summary = write_report(spec.out, spec.target_acc)  # from the run folders' files alone
    folder = StudyFolder(spec.out)
    log(f"wrote {folder.report_path} (and as one page, {folder.page_path}), {folder.summary_path} "
        "and the figures beside them")
    return StudyResult(spec.out, "complete", summary)

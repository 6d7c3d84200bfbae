"""Training a model on a split folder: config, data, model, optimizer, loop, checkpoints.

This module settles the run's settings, then runs its stages: run_setup.py before the first epoch,
epochs.py from there to the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Mapping

from catsdogs.data.transforms import AUGMENTS
from catsdogs.errors import UsageError
from catsdogs.interrupts import ctrl_c_deferred
from catsdogs.training.auto import choose_from_frontier
from catsdogs.training.config import TrainConfig, build_config, config_to_yaml
from catsdogs.training.distributed import Team, finish, team_from_environment
from catsdogs.training.epochs import Run, TrainResult, log_start, open_run_folder, restore, result_of, run_epochs
from catsdogs.training.loop import Hooks, Log
from catsdogs.training.models import MODELS
from catsdogs.training.optim import get_optimizer_spec, load_optimizer_plugins
from catsdogs.training.resume import resumed_config
from catsdogs.training.run_setup import (build_state, choose_hardware, initial_model, open_data, read_splits,
                                         weights_hash)
from catsdogs.training.runs import RUNS_ROOT, RunFolder
from catsdogs.training.schedules import SCHEDULERS
from catsdogs.training.tensorboard_log import check_tensorboard
from catsdogs.training.tricks import whiten_stem

__all__ = ["TrainResult", "new_run_config", "print_config", "resolve_config", "train"]


def new_run_config(config_file: Path | None, flags: Mapping[str, Any]) -> TrainConfig:
    """The settings of a new run: defaults < `config_file` < `flags` (see build_config).

    Without --out, a config file's runs are named after it: configs/recipes/cpu-fast.yaml trains
    into runs/cpu-fast (numbered if it exists), never a hidden folder (`.yaml` makes runs/yaml).
    """
    cfg = build_config(config_file, flags)
    if config_file is not None and cfg.out is None:
        cfg = dataclasses.replace(cfg, out=str(RUNS_ROOT / (Path(config_file).stem.lstrip(".") or "run")))
    return cfg



def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the optimizer's own defaults (batch size, lr, ...) and check names and sizes."""
    load_optimizer_plugins()
    if cfg.optim is None:
        raise UsageError("choose an optimizer with --optim (see `catsdogs optimizers`), e.g. --optim adam")
    spec = get_optimizer_spec(cfg.optim)
    model = MODELS.get(cfg.model)
    SCHEDULERS.get(cfg.scheduler)
    AUGMENTS.get(cfg.augment)
    if cfg.image_size < model.min_image_size:
        raise UsageError(f"model {cfg.model} needs --image-size of at least {model.min_image_size}, "
                         f"got {cfg.image_size}")
    if cfg.frontier and not cfg.time_budget:
        raise UsageError("auto chooses a model for a time budget: give one with --time-budget MINUTES")
    if cfg.whiten_stem and cfg.pretrained:
        raise UsageError("whiten_stem starts the first layer from the photos, --pretrained from ImageNet: "
                         "choose one (remove whiten_stem from the config file, or --pretrained)")
    small = cfg.progressive_size
    if small and not model.min_image_size <= small < cfg.image_size:
        raise UsageError(f"progressive_size {small} must be below image_size {cfg.image_size} and at least "
                         f"{model.min_image_size} for model {cfg.model}: change it in the config file (0: off)")
    fill = {"batch_size": spec.batch_size, **{k: spec.defaults.get(k) for k in ("lr", "momentum", "weight_decay")}}
    # --cache rebuild acts once, in the run that asks (train notes it before this): what the run saves,
    # and so what evaluate, compare and a resume read, is auto.
    cache = "auto" if cfg.cache == "rebuild" else cfg.cache
    return dataclasses.replace(cfg, cache=cache,
                               **{k: v for k, v in fill.items() if getattr(cfg, k) is None and v is not None})



def train(cfg: TrainConfig | None, resume: str | Path | None = None, flags: Mapping[str, Any] | None = None,
          progress: bool = True, log: Log = print, hooks: Hooks | None = None) -> TrainResult:
    """Train `cfg` into a new run folder, or continue the run in `resume`.

    When resuming, the config comes from the checkpoint and `flags` may change only
    settings_with("resumable") (raising --epochs, say); any other differing flag is refused. Started
    by torchrun, each process trains on its share of every batch (see training/distributed.py). `hooks`:
    callables told of each step, epoch and save (see Hooks).
    """
    team = team_from_environment()
    if not team.main:
        progress, log = False, _quiet
    try:
        return _train(cfg, resume, flags, progress, log, team, hooks or Hooks())
    finally:
        with ctrl_c_deferred() if team.enabled else contextlib.nullcontext():
            finish(team)



def _quiet(_: str) -> None:
    pass



def _train(cfg: TrainConfig | None, resume: str | Path | None, flags: Mapping[str, Any] | None, progress: bool,
           log: Log, team: Team, hooks: Hooks) -> TrainResult:
    cfg, state, rebuild = _resolve_settings(cfg, resume, flags, team)
    run_dir = Path(resume) if state is not None else None
    hardware = choose_hardware(cfg, team)
    splits = read_splits(cfg, state, run_dir, team)
    chosen = None
    if state is None:  # recorded absolute, so that the run resumes and evaluates from any folder
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).resolve()))
        if cfg.frontier:  # auto: the model and sizes for this machine's speed (a resume keeps the choice)
            cfg, chosen = choose_from_frontier(cfg, hardware.device, hardware.precision, len(splits.train),
                                               len(splits.val), team, log)
            cfg = resolve_config(cfg)
    # The model before the cache: a wrong model, size or weights file is told before minutes of decoding.
    model, init_hash = initial_model(cfg, state, splits.train, log)
    sources = open_data(cfg, splits, hardware.device, rebuild, progress, team, log)
    if cfg.whiten_stem and state is None:  # a resume brings the weights back from last.pt
        whiten_stem(model, sources.train, cfg.image_size)
        init_hash = weights_hash(model)
    run = Run(cfg=cfg, team=team, log=log, show_progress=progress, run_dir=run_dir, hardware=hardware,
               splits=splits, sources=sources, init_hash=init_hash,
               state=build_state(cfg, model, hardware.device, hardware.precision, team), hooks=hooks)
    if state is not None:
        if not restore(run, state):
            return result_of(run.run_dir, run.progress, run.cfg, "nothing-to-do")
    else:
        open_run_folder(run)
        if chosen is not None and team.main:
            RunFolder(run.run_dir).write_auto(chosen)
    log_start(run)
    return run_epochs(run)



def _resolve_settings(cfg: TrainConfig | None, resume: str | Path | None, flags: Mapping[str, Any] | None,
                      team: Team) -> tuple[TrainConfig, dict[str, Any] | None, bool]:
    """The run's settings, restored from `resume`'s last.pt when it continues a run, and checked; also that
    checkpoint (None for a new run) and whether --cache rebuild was asked (resolve_config records auto)."""
    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = RunFolder(run_dir).load("last")
        if team.main:
            for stale in run_dir.glob(".*.tmp"):  # left by a writer that was killed mid-save
                stale.unlink(missing_ok=True)
        cfg = resumed_config(state, flags or {}, run_dir)
    if cfg is None:
        raise ValueError("train() needs a config unless it resumes a run")
    rebuild = cfg.cache == "rebuild"
    cfg = resolve_config(cfg)
    if cfg.tensorboard:
        check_tensorboard()
    if state is None:
        _check_out(cfg)
    if team.enabled and cfg.batch_size < team.world:
        raise UsageError(f"--batch-size {cfg.batch_size} is smaller than the {team.world} processes: each needs at "
                         f"least one image a step (use --batch-size {team.world} or more, or fewer processes)")
    return cfg, state, rebuild



def _check_out(cfg: TrainConfig) -> None:
    """Before any work: the run folder must be creatable, and not inside data/train (or val, test),
    where it would be read as one more class."""
    given = Path(cfg.out or RUNS_ROOT / str(cfg.optim))
    out = given.resolve()
    for split in ("train", "val", "test"):
        if out.is_relative_to((Path(cfg.data) / split).resolve()):
            raise UsageError(f"--out {given} is inside {Path(cfg.data) / split}, where it would be read as a "
                             "class of photos: choose a folder outside the split")
    for parent in [given, *given.parents]:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {given}: {parent} is a file, so the run folder cannot be made there")



def print_config(cfg: TrainConfig | None, resume: str | Path | None = None,
                 flags: Mapping[str, Any] | None = None) -> str:
    """The resolved config as YAML, exactly as the run folder's config.yaml would hold it: that of
    `cfg`, or, with `resume`, the settings a resume of that run with `flags` would train with."""
    if resume is not None:
        cfg = resumed_config(RunFolder(resume).load("last"), flags or {}, Path(resume))
    if cfg is None:
        raise ValueError("print_config() needs a config unless it shows a resumed run's")
    return config_to_yaml(resolve_config(cfg))

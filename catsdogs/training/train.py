"""Training a model on a split folder: config, data, model, optimizer, loop, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from catsdogs.cpus import tune_allocator, usable_cpus
from catsdogs.data.cache import BatchSource, ImageSplit, fits_on_gpu, load_cache, read_split
from catsdogs.data.transforms import AUGMENTS, Preset, eval_preset, train_preset
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.interrupts import ctrl_c_deferred
from catsdogs.training.auto import choose_from_frontier
from catsdogs.training.config import TrainConfig, build_config, config_to_yaml
from catsdogs.training.distributed import (Team, agree_max, finish, from_main, gather, start, team_from_environment,
                                          wait_for_all)
from catsdogs.training.ema import ModelEMA
from catsdogs.training.hardware import Precision, select_device, select_precision
from catsdogs.training.lookahead import Lookahead
from catsdogs.training.loop import EpochLoop, Hooks, Log, stop_on_signals
from catsdogs.training.models import MODELS, build_model, head_name, load_pretrained
from catsdogs.training.optim import build_optimizer, get_optimizer_spec, load_optimizer_plugins, parameter_groups
from catsdogs.training.tricks import effective_lr, set_bn_momentum, whiten_stem
from catsdogs.training.placement import placement
from catsdogs.training.resume import (LastSaver, budget_spent, check_same_split, data_fingerprint, how_to_train_longer,
                                      model_state, point_best_at, resume_command, resumed_config)
from catsdogs.training.runs import RUNS_ROOT, RunFolder, RunStatus, new_run_dir
from catsdogs.training.schedules import SCHEDULERS
from catsdogs.training.selection import best_epoch, better_epoch, selected_by
from catsdogs.training.state import RANK_SEED_STRIDE, Progress, TrainState
from catsdogs.training.tensorboard_log import Board, check_tensorboard

MAX_UNREADABLE_FRACTION = 0.01
# Seconds in which a second Ctrl-C under torchrun is taken as torchrun passing on the first.
TORCHRUN_SIGNAL_ECHO = 5.0


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


def training_preset(cfg: TrainConfig) -> Preset:
    """How the run's training images reach the model: resize, its augmentation and flips, normalise."""
    return train_preset(cfg.image_size, cfg.hflip, cfg.vflip, cfg.augment)


def training_generators(seed: int, rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """The run's batch-order generator (the same in every process, whose batches are then shared out)
    and process `rank`'s augmentation generator. `catsdogs show --augment` draws with these too."""
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1 + RANK_SEED_STRIDE * rank)
    return order_gen, aug_gen


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    status: str  # finished | early-stopped | time-budget | interrupted | nothing-to-do
    # The epoch best.pt holds (see best_epoch: by val_balanced_acc under --class-weights balanced, by
    # val_acc otherwise), and its val accuracy and balanced accuracy; None before a first epoch.
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_val_balanced_acc: float | None = None


def _result(run_dir: Path, progress: Progress, cfg: TrainConfig, status: str) -> TrainResult:
    best = _best(progress, cfg)
    return TrainResult(run_dir, progress.epoch, status, **best)


def _best(progress: Progress, cfg: TrainConfig) -> dict[str, Any]:
    """best_epoch, best_val_acc and best_val_balanced_acc of the run so far, as status.json holds them."""
    if not progress.history:
        return {"best_epoch": None, "best_val_acc": None, "best_val_balanced_acc": None}
    row = best_epoch(progress.history, selected_by(cfg.class_weights))
    return {"best_epoch": int(row["epoch"]), "best_val_acc": row["val_acc"],
            "best_val_balanced_acc": row.get("val_balanced_acc")}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


@dataclass(frozen=True)
class _Hardware:
    """Where the run trains, and how the log and status.json name it."""
    device: torch.device
    precision: Precision
    note: str


@dataclass(frozen=True)
class _Splits:
    """The train and val photos, and their fingerprint (what a resume checks it trains on)."""
    train: ImageSplit
    val: ImageSplit
    fingerprint: str


@dataclass(frozen=True)
class _Sources:
    """The batches of train and val photos, and the unreadable files already named in a warning."""
    train: BatchSource
    val: BatchSource
    warned: set[Path]


@dataclass
class _Run:
    """What the stages of one run hand on to each other, from the open data to the finish."""
    cfg: TrainConfig
    team: Team
    log: Log
    show_progress: bool  # progress bars
    run_dir: Path | None  # a resumed run's folder; a new run's once _open_run_folder has made it
    hardware: _Hardware
    splits: _Splits
    sources: _Sources
    init_hash: str
    state: TrainState  # what training changes, and last.pt saves
    hooks: Hooks

    @property
    def progress(self) -> Progress:
        return self.state.progress

    def check_unreadable(self) -> None:
        _check_unreadable((self.sources.train, self.sources.val), self.team, self.sources.warned, self.cfg.data,
                          self.log)

    def write_status(self, status: str) -> None:
        _write_status(self.run_dir, status, self.progress, self.cfg, self.init_hash, self.hardware.note,
                      self.sources.train, self.sources.val, device=self.hardware.device)


def _train(cfg: TrainConfig | None, resume: str | Path | None, flags: Mapping[str, Any] | None, progress: bool,
           log: Log, team: Team, hooks: Hooks) -> TrainResult:
    cfg, state, rebuild = _resolve_settings(cfg, resume, flags, team)
    run_dir = Path(resume) if state is not None else None
    hardware = _choose_hardware(cfg, team)
    splits = _read_splits(cfg, state, run_dir, team)
    chosen = None
    if state is None:  # recorded absolute, so that the run resumes and evaluates from any folder
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).resolve()))
        if cfg.frontier:  # auto: the model and sizes for this machine's speed (a resume keeps the choice)
            cfg, chosen = choose_from_frontier(cfg, hardware.device, hardware.precision, len(splits.train),
                                               len(splits.val), team, log)
            cfg = resolve_config(cfg)
    # The model before the cache: a wrong model, size or weights file is told before minutes of decoding.
    model, init_hash = _build_model(cfg, state, splits.train, log)
    sources = _open_data(cfg, splits, hardware.device, rebuild, progress, team, log)
    if cfg.whiten_stem and state is None:  # a resume brings the weights back from last.pt
        whiten_stem(model, sources.train, cfg.image_size)
        init_hash = _weights_hash(model)
    run = _Run(cfg=cfg, team=team, log=log, show_progress=progress, run_dir=run_dir, hardware=hardware,
               splits=splits, sources=sources, init_hash=init_hash,
               state=_build_state(cfg, model, hardware.device, hardware.precision, team), hooks=hooks)
    if state is not None:
        if not _restore(run, state):
            return _result(run.run_dir, run.progress, run.cfg, "nothing-to-do")
    else:
        _open_run_folder(run)
        if chosen is not None and team.main:
            RunFolder(run.run_dir).write_auto(chosen)
    _log_start(run)
    return _run_epochs(run)


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


def _choose_hardware(cfg: TrainConfig, team: Team) -> _Hardware:
    """The device and precision the run trains with, and how the log and status.json name them."""
    device = start(team, cfg.device) if team.enabled else select_device(cfg.device)
    precision = select_precision(cfg.precision, device)
    hardware = f"{device.type}, {precision.note}" + (f", {team.world} processes (torchrun)" if team.enabled else "")
    tune_allocator()
    return _Hardware(device, precision, hardware)


def _read_splits(cfg: TrainConfig, state: dict[str, Any] | None, run_dir: Path | None, team: Team) -> _Splits:
    """The train and val photos and their fingerprint; a resume checks they are the ones it trained on."""
    train_split = read_split(cfg.data, "train", state["classes"] if state else None)
    val_split = read_split(cfg.data, "val", train_split.classes)
    fingerprint = data_fingerprint(train_split, val_split)
    if state is not None:
        check_same_split(state, fingerprint, cfg.data, run_dir)
        if team.main:
            point_best_at(run_dir, cfg.data)
    return _Splits(train_split, val_split, fingerprint)


def _build_model(cfg: TrainConfig, state: dict[str, Any] | None, train_split: ImageSplit,
                 log: Log) -> tuple[nn.Module, str]:
    """The model at its first weights (random, or pretrained for a new run), and their hash."""
    _seed_everything(cfg.seed)
    model = build_model(cfg.model, len(train_split.classes), cfg.image_size)
    set_bn_momentum(model, cfg.bn_momentum)
    if cfg.pretrained and state is None:
        loaded, missed = load_pretrained(model, cfg.model, cfg.pretrained)
        fresh_head = loaded + len(missed) < len(model.state_dict())  # the rest is the head, when it did not fit
        log(f"loaded {loaded} pretrained tensors into {cfg.model}"
            + (f" (its {len(train_split.classes)}-class head starts fresh)" if fresh_head else "")
            + (f"; left at random, as the file's do not fit: {', '.join(missed)}" if missed else ""))
    if cfg.progressive_size:
        _check_takes_size(model, cfg)
    return model, _weights_hash(model)


def _open_data(cfg: TrainConfig, splits: _Splits, device: torch.device, rebuild: bool, progress: bool, team: Team,
               log: Log) -> _Sources:
    """The batches of train and val photos: from the decoded cache (built or mapped), or decoded as read;
    and the unreadable photos already named in a warning (too many of them stop the run here)."""
    jobs = usable_cpus()
    images = {}
    for turn in ("main", "others"):  # process 0 builds the cache; the others then map the finished files
        if (turn == "main") == team.main:
            mode = "rebuild" if rebuild and team.main else cfg.cache  # the others map what process 0 rebuilt
            images = {s.root.name: load_cache(s, cfg.image_size, mode, jobs, progress)
                      for s in (splits.train, splits.val)}
        wait_for_all(team)
    workers = cfg.workers if cfg.workers is not None else (0 if images["train"] is not None else max(jobs - 1, 0))
    # Both caches on the GPU or neither, judged together; only process 0 validates, so only it holds val there.
    resident = images["train"] is not None and images["val"] is not None and \
        fits_on_gpu(images["train"].nbytes + images["val"].nbytes, device)
    train_source = BatchSource(splits.train, training_preset(cfg), images["train"], workers, device,
                               resident=resident)
    val_source = BatchSource(splits.val, eval_preset(cfg.image_size), images["val"], workers, device,
                             resident=resident and team.main)
    warned: set[Path] = set()
    _check_unreadable((train_source, val_source), team, warned, cfg.data, log)
    return _Sources(train_source, val_source, warned)


def _build_state(cfg: TrainConfig, model: nn.Module, device: torch.device, precision: Precision,
                 team: Team) -> TrainState:
    """The run's start: the model on its device, its optimizer, its EMA (with --ema), the gradient scaler
    and this process's generators."""
    model = model.to(device, memory_format=torch.channels_last)
    if team.enabled:
        torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * team.rank)  # each process its own dropout masks
    spec = get_optimizer_spec(cfg.optim)
    groups = parameter_groups(model, cfg.weight_decay, head_name(model), cfg.body_lr_scale,
                              bn_bias_lr_scale=cfg.bn_bias_lr_scale)
    optimizer = build_optimizer(cfg.optim, groups,
                                **_optimizer_overrides(cfg, spec.defaults))
    if cfg.lookahead_steps:
        optimizer = Lookahead(optimizer, cfg.lookahead_steps, cfg.lookahead_alpha)
    ema = ModelEMA(model, cfg.ema) if cfg.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scale_grads)
    order_gen, aug_gen = training_generators(cfg.seed, team.rank)
    return TrainState(model=model, optimizer=optimizer, scaler=scaler, order_gen=order_gen, aug_gen=aug_gen, ema=ema)


def _restore(run: _Run, state: dict[str, Any]) -> bool:
    """Bring the run back to where `state` (its last.pt) left it. False when it has nothing left to do:
    then it says why, and writes the status a kill after the last save left unwritten."""
    cfg, team, log, run_dir = run.cfg, run.team, run.log, run.run_dir
    run.state.load_state_dict(state, team, log)
    progress = run.progress
    run.init_hash = state.get("init_hash", run.init_hash)
    # A budget once spent has ended its schedule: a changed --time-budget would restart it (the lr
    # jumping back up), which no straight run does. A budget not yet spent may be raised or removed where
    # nothing in the run's plan spans its length (resumed_config refuses it otherwise).
    progress.budget_spent = budget_spent(progress.history, state["config"].get("time_budget"), cfg.time_budget)
    # A run that reached its last epoch with `patience` epochs gone without a better one was not stopped early
    # then (it had ended anyway); with more epochs it has, as a straight run of that length would have been.
    newly_stopped = not progress.step and not progress.stopped_early and _out_of_patience(cfg, progress)
    progress.stopped_early |= newly_stopped
    if progress.epoch >= cfg.epochs or progress.stopped_early or progress.budget_spent:
        if progress.stopped_early:
            why = ("stopped early: nothing to do (to train longer, start a new run with a larger --patience, "
                   "or --patience 0)")
        elif progress.budget_spent:
            why = ("used its time budget, and its schedule, fitted to that time, has ended: nothing to do (to "
                   "train longer, start a new run with a larger --time-budget)")
        else:
            longer = how_to_train_longer(cfg, run_dir)
            why = f"finished {progress.epoch} epochs: nothing to do (to train longer, {longer})"
        log(f"{run_dir} already {why}")
        if team.main and newly_stopped:  # what a straight run of these epochs would have left
            RunFolder(run_dir).write_config(config_to_yaml(cfg))
        if team.main and (newly_stopped or not RunFolder(run_dir).status_path.is_file()):
            # stopped early only now, or killed between its last save and the status
            run.write_status("early-stopped" if progress.stopped_early else
                             "time-budget" if progress.budget_spent else "finished")
        return False
    log(f"resuming {run_dir} in epoch {progress.epoch + 1}"
        + (f" after step {progress.step}" if progress.step else ", from its start"))
    if team.main:
        RunFolder(run_dir).write_config(config_to_yaml(cfg))
    return True


def _open_run_folder(run: _Run) -> None:
    """Make a new run's folder (numbered when --out exists) and write its config.yaml there."""
    cfg, team = run.cfg, run.team
    run_dir = new_run_dir(cfg.out or RUNS_ROOT / cfg.optim) if team.main else None
    run.run_dir = run_dir = from_main(run_dir, team)  # the folder process 0 created, numbered or not
    if cfg.out and Path(cfg.out) != run_dir:
        run.log(f"{cfg.out} already exists, so this run goes to {run_dir} (a run never reuses a folder)")
    if team.main:
        RunFolder(run_dir).write_config(config_to_yaml(cfg))


def _log_start(run: _Run) -> None:
    """Tell where the run writes, and what it trains on, with what, for how long."""
    cfg, team, log = run.cfg, run.team, run.log
    log(f"run folder: {run.run_dir}")
    log(f"device: {run.hardware.note}, channels-last; "
        f"data: {cfg.data} ({len(run.sources.train)} train / {len(run.sources.val)} val images, "
        f"classes {', '.join(run.splits.train.classes)}); cache: {_cache_note(run.sources.train)}")
    share = f", {_per_process(cfg.batch_size, team.world)} per process" if team.enabled else ""
    share += f", in passes of {cfg.micro_batch}" if cfg.micro_batch and cfg.micro_batch < cfg.batch_size else ""
    log(f"model {cfg.model} at {cfg.image_size}px, optimizer {cfg.optim} (lr {_lr_note(cfg)}, batch {cfg.batch_size}"
        f"{share}), {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}" + _fine_tuning_note(cfg, run.state.model))


def _run_epochs(run: _Run) -> TrainResult:
    """Train epoch after epoch until the last, an early stop, the time budget or Ctrl-C; then finish."""
    cfg, team, log, progress, run_dir = run.cfg, run.team, run.log, run.progress, run.run_dir
    model = run.state.model
    # Process 0 alone writes TensorBoard events, as it alone writes history.csv.
    board = Board(run_dir, progress.global_step, run.splits.train.classes) if cfg.tensorboard and team.main else None
    loop = EpochLoop(cfg=cfg, state=run.state, precision=run.hardware.precision, device=run.hardware.device,
                     train_source=run.sources.train, val_source=run.sources.val, team=team,
                     net=_data_parallel(model, run.hardware.device) if team.enabled else model, board=board,
                     hooks=run.hooks)
    identity = {"classes": list(run.splits.train.classes), "init_hash": run.init_hash,
                "data_fingerprint": run.splits.fingerprint}
    save_last = LastSaver(run_dir, cfg, run.state, identity, team, after_save=run.hooks.after_save)
    status = "finished"
    try:
        with stop_on_signals(log, repeat_window=TORCHRUN_SIGNAL_ECHO if team.enabled else 0.0) as stop:
            while progress.epoch < cfg.epochs:
                completed = loop.run_epoch(stop, run.show_progress)
                if not completed:
                    save_last()
                    status = "interrupted"
                    log(f"interrupted in epoch {progress.epoch + 1} after step {progress.step}; "
                        f"resume with: {resume_command(run_dir, team)}")
                    break
                stopped = _end_epoch(run, loop, save_last, identity)
                if stopped is not None:
                    status = stopped
                    break
                # A Ctrl-C in the epoch's last step (or its only one), or while it was validated: run_epoch never
                # stops an epoch after its last step, so the run stops at its end, which _end_epoch has saved.
                if agree_max([stop.requested], team)[0] and progress.epoch < cfg.epochs:
                    status = "interrupted"
                    log(f"interrupted after epoch {progress.epoch}; resume with: {resume_command(run_dir, team)}")
                    break
            # Still inside the signal handling: under torchrun a Ctrl-C reaches each process twice, and
            # the second copy may come only now; it must not cut the status file short.
            _finish(run, loop, status)
    except BaseException as exc:  # a second Ctrl-C, or a failure (out of memory): say what is left
        if team.main:
            _after_abort(run_dir, team, log, "stopped at once" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    finally:
        if board is not None:
            board.close()
    return _result(run_dir, progress, cfg, status)


def _out_of_patience(cfg: TrainConfig, progress: Progress) -> bool:
    """Early stopping's rule: `patience` epochs without a better one, before the last epoch (which ends the
    run anyway, as finished)."""
    return bool(cfg.patience) and progress.epochs_since_best >= cfg.patience and progress.epoch < cfg.epochs


def _end_epoch(run: _Run, loop: EpochLoop, save_last: LastSaver, identity: dict[str, Any]) -> str | None:
    """After a finished epoch: patience, history.csv, best.pt and last.pt, its log line. Returns the
    status that stops the run here (time-budget, early-stopped), or None to go on."""
    cfg, team, log, progress, run_dir = run.cfg, run.team, run.log, run.progress, run.run_dir
    column = selected_by(cfg.class_weights)  # what makes an epoch the best
    row = progress.history[-1]
    improved = better_epoch(row, progress.history[:-1], column)
    if improved:
        progress.epochs_since_best = 0
    else:
        progress.epochs_since_best += 1
    if _out_of_patience(cfg, progress):
        progress.stopped_early = True
    if team.main:
        RunFolder(run_dir).write_history(progress.history)
    # best.pt before last.pt: a kill between the two then redoes this epoch on resume (and
    # writes best.pt again), where the other order would leave best.pt an epoch behind for good.
    if improved and team.main:
        RunFolder(run_dir).save("best", model_state(cfg, run.state.kept_model, progress, identity))
    save_last()
    if loop.board is not None:  # after the save, so that a resume never writes the epoch twice
        loop.board.epoch(row)
    balanced = f" balanced {row['val_balanced_acc']:.4f}" if column == "val_balanced_acc" else ""
    log(f"epoch {row['epoch']}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        f"{balanced}  {row['seconds']:.1f}s"
        + ("  (best)" if improved else ""))
    run.check_unreadable()
    if progress.budget_spent:
        cut = loop.partial_epoch
        log(f"time budget of {cfg.time_budget:g} min reached after {progress.global_step} steps"
            + (f"; epoch {row['epoch']} stopped after {cut[0]} of its {cut[1]} steps, and its row in "
               "history.csv covers those" if cut else ""))
        return "time-budget"
    if progress.stopped_early:
        log(f"early stop: {_selected_name(cfg)} has not improved for {cfg.patience} "
            f"epoch{'s' if cfg.patience != 1 else ''} "
            f"(best {best_epoch(progress.history, column)[column]:.4f})")
        return "early-stopped"
    return None


def _finish(run: _Run, loop: EpochLoop, status: str) -> None:
    """Write status.json and close TensorBoard's record; unless interrupted, tell the best score and what next."""
    cfg, progress = run.cfg, run.progress
    if run.team.main:
        run.write_status(status)
    if status != "interrupted" and loop.board is not None:
        loop.board.finish(cfg, progress.history, status)
    if status != "interrupted":
        column = selected_by(cfg.class_weights)
        by_balanced = column == "val_balanced_acc"
        best = best_epoch(progress.history, column)
        score = (f"best val balanced accuracy {best['val_balanced_acc']:.4f} (accuracy {best['val_acc']:.4f})"
                 if by_balanced else f"best val accuracy {best['val_acc']:.4f}")
        score += _baseline_note(run.splits.val, balanced_shown=by_balanced)
        run.log(f"{score}; next: catsdogs evaluate {shlex.quote(str(run.run_dir))}")


def _fine_tuning_note(cfg: TrainConfig, model: nn.Module) -> str:
    notes = [f"only the head ({head_name(model)}) trains for {cfg.freeze_epochs} epoch"
             f"{'s' if cfg.freeze_epochs != 1 else ''}"] if cfg.freeze_epochs else []
    notes += [f"the body at {cfg.body_lr_scale:g} x lr"] if cfg.body_lr_scale != 1.0 else []
    return f"; {', '.join(notes)}" if notes else ""


def _check_takes_size(model: nn.Module, cfg: TrainConfig) -> None:
    """Progressive resizing needs a model that takes any image size (global pooling, no fixed flatten)."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, cfg.progressive_size, cfg.progressive_size))
    except RuntimeError:
        raise UsageError(f"model {cfg.model} takes only {cfg.image_size}px images (its head is sized for them), so "
                         "it cannot train at progressive_size first: use a model with global pooling, such as "
                         "bncnn-s") from None
    finally:
        model.train(was_training)


def _selected_name(cfg: TrainConfig) -> str:
    return "val balanced accuracy" if selected_by(cfg.class_weights) == "val_balanced_acc" else "val accuracy"


def _cache_note(source: BatchSource) -> str:
    if source.on_device is not None:
        return "decoded once, held in GPU memory"
    if source.images is not None:
        return "decoded once, memory-mapped"
    return f"off (decoding every epoch with {source.workers} worker(s))"


def _optimizer_overrides(cfg: TrainConfig, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """lr always; momentum and weight_decay only when set, so Adam is not handed a momentum."""
    overrides: dict[str, Any] = {"lr": effective_lr(cfg.lr, cfg.batch_size, cfg.lr_batch)}
    for key in ("momentum", "weight_decay"):
        value = getattr(cfg, key)
        if value is not None and (key in defaults or value != 0):
            overrides[key] = value
    return overrides


def _lr_note(cfg: TrainConfig) -> str:
    lr = effective_lr(cfg.lr, cfg.batch_size, cfg.lr_batch)
    return f"{lr:g}" + (f" = {cfg.lr:g} x {cfg.batch_size}/{cfg.lr_batch}" if lr != cfg.lr else "")


def _per_process(batch_size: int, world: int) -> str:
    share, extra = divmod(batch_size, world)
    return f"{share}" if extra == 0 else f"{share}-{share + 1}"


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


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _after_abort(run_dir: Path, team: Team, log: Log, what: str) -> None:
    """Say what an abort (`what`: stopped at once, failed) left to resume, and remove a run folder that
    would hold nothing but its config (it would pass for the most recent run and fail every command)."""
    folder = RunFolder(run_dir)
    if folder.last_path.is_file():
        log(f"{what}; the last save can be resumed with: {resume_command(run_dir, team)}")
        return
    for leftover in [folder.config_path, folder.status_path, *run_dir.glob(".*.tmp")]:
        leftover.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
        log(f"{what.split()[0]} before anything was saved: nothing to resume, so {run_dir} is removed")
    except OSError:
        log(f"{what.split()[0]} before anything was saved: nothing to resume in {run_dir}")


def _baseline_note(split: ImageSplit, balanced_shown: bool = False) -> str:
    """For unbalanced classes, what always answering the largest one scores: accuracy alone flatters."""
    counts = np.bincount(split.labels, minlength=len(split.classes))
    if not len(split) or counts.max() / len(split) < 1 / len(split.classes) + 0.1:
        return ""
    return (f" (unbalanced classes: always answering {split.classes[int(counts.argmax())]} scores "
            f"{counts.max() / len(split):.4f}" + ("" if balanced_shown else
                                                  "; see balanced accuracy in `catsdogs evaluate`") + ")")


def _write_status(run_dir: Path, status: str, progress: Progress, cfg: TrainConfig, init_hash: str,
                  hardware: str, *sources: BatchSource, device: torch.device | None = None) -> None:
    skipped = sorted({str(p) for s in sources for p in (s.failed + s.split.unreadable)})
    reason = f"{_selected_name(cfg)} did not improve for {cfg.patience} epochs" if status == "early-stopped" else None
    RunFolder(run_dir).write_status(RunStatus(
        status=status, epochs_done=progress.epoch, epochs=cfg.epochs,
        # best.pt's epoch, and its val accuracy and balanced accuracy: chosen by best_chosen_by
        **_best(progress, cfg), best_chosen_by=selected_by(cfg.class_weights),
        init_hash=init_hash, hardware=hardware, unreadable_images=skipped, reason=reason,
        **(placement(device) if device is not None else {})))


def _check_unreadable(sources: tuple[BatchSource, ...], team: Team, warned: set[Path], data: str, log: Log) -> None:
    """Stop the run when more than MAX_UNREADABLE_FRACTION of its photos could not be read, else warn
    once about each such file not yet in `warned` (and add it there).

    A file counts once however often it fails: with --cache off it fails in every epoch. Under torchrun
    each process decodes its own share, so the processes pool what they met first: every one then
    decides alike, and process 0's status.json lists them all.
    """
    for source in sources:
        for met in gather(source.failed, team):
            source.failed += [path for path in met if path not in source.failed]
    bad = sorted({path for s in sources for path in (*s.split.unreadable, *s.failed)}, key=str)
    total = sum(len(s.split) for s in sources)
    if len(bad) > MAX_UNREADABLE_FRACTION * total:
        raise CatsdogsError(f"{len(bad)} of {total} images could not be read ({_some(bad)}); "
                            f"split the source again with `catsdogs split SOURCE --out {shlex.quote(str(data))} "
                            "--force`")
    new = [path for path in bad if path not in warned]
    if new:
        log(f"warning: skipped {len(new)} unreadable image(s): {_some(new)}")
        warned.update(new)


def _some(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")


def print_config(cfg: TrainConfig | None, resume: str | Path | None = None,
                 flags: Mapping[str, Any] | None = None) -> str:
    """The resolved config as YAML, exactly as the run folder's config.yaml would hold it: that of
    `cfg`, or, with `resume`, the settings a resume of that run with `flags` would train with."""
    if resume is not None:
        cfg = resumed_config(RunFolder(resume).load("last"), flags or {}, Path(resume))
    if cfg is None:
        raise ValueError("print_config() needs a config unless it shows a resumed run's")
    return config_to_yaml(resolve_config(cfg))

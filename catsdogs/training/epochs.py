"""A run from its first epoch to its end.

Its folder (new, or a resume's restored), epoch after epoch until the last, an early stop, the time budget
or Ctrl-C, the saves after each, and status.json.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from catsdogs.data.cache import BatchSource, ImageSplit
from catsdogs.training.config import TrainConfig, config_to_yaml
from catsdogs.training.distributed import Team, agree_max, from_main
from catsdogs.training.loop import EpochLoop, Hooks, Log, stop_on_signals
from catsdogs.training.models import head_name
from catsdogs.training.placement import placement
from catsdogs.training.resume import LastSaver, budget_spent, how_to_train_longer, model_state, resume_command
from catsdogs.training.run_setup import Hardware, Sources, Splits, check_unreadable
from catsdogs.training.runs import RUNS_ROOT, RunFolder, RunStatus, new_run_dir
from catsdogs.training.selection import best_epoch, better_epoch, selected_by
from catsdogs.training.state import Progress, TrainState
from catsdogs.training.tensorboard_log import Board
from catsdogs.training.tricks import effective_lr

# Seconds in which a second Ctrl-C under torchrun is taken as torchrun passing on the first.
TORCHRUN_SIGNAL_ECHO = 5.0


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



def result_of(run_dir: Path, progress: Progress, cfg: TrainConfig, status: str) -> TrainResult:
    best = _best(progress, cfg)
    return TrainResult(run_dir, progress.epoch, status, **best)



def _best(progress: Progress, cfg: TrainConfig) -> dict[str, Any]:
    """best_epoch, best_val_acc and best_val_balanced_acc of the run so far, as status.json holds them."""
    if not progress.history:
        return {"best_epoch": None, "best_val_acc": None, "best_val_balanced_acc": None}
    row = best_epoch(progress.history, selected_by(cfg.class_weights))
    return {"best_epoch": int(row["epoch"]), "best_val_acc": row["val_acc"],
            "best_val_balanced_acc": row.get("val_balanced_acc")}



@dataclass
class Run:
    """What the stages of one run hand on to each other, from the open data to the finish."""
    cfg: TrainConfig
    team: Team
    log: Log
    show_progress: bool  # progress bars
    run_dir: Path | None  # a resumed run's folder; a new run's once open_run_folder has made it
    hardware: Hardware
    splits: Splits
    sources: Sources
    init_hash: str
    state: TrainState  # what training changes, and last.pt saves
    hooks: Hooks

    @property
    def progress(self) -> Progress:
        return self.state.progress

    def check_unreadable(self) -> None:
        check_unreadable((self.sources.train, self.sources.val), self.team, self.sources.warned, self.cfg.data,
                          self.log)

    def write_status(self, status: str) -> None:
        _write_status(self.run_dir, status, self.progress, self.cfg, self.init_hash, self.hardware.note,
                      self.sources.train, self.sources.val, device=self.hardware.device)



def restore(run: Run, state: dict[str, Any]) -> bool:
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



def open_run_folder(run: Run) -> None:
    """Make a new run's folder (numbered when --out exists) and write its config.yaml there."""
    cfg, team = run.cfg, run.team
    run_dir = new_run_dir(cfg.out or RUNS_ROOT / cfg.optim) if team.main else None
    run.run_dir = run_dir = from_main(run_dir, team)  # the folder process 0 created, numbered or not
    if cfg.out and Path(cfg.out) != run_dir:
        run.log(f"{cfg.out} already exists, so this run goes to {run_dir} (a run never reuses a folder)")
    if team.main:
        RunFolder(run_dir).write_config(config_to_yaml(cfg))



def log_start(run: Run) -> None:
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



def run_epochs(run: Run) -> TrainResult:
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
    return result_of(run_dir, progress, cfg, status)



def _out_of_patience(cfg: TrainConfig, progress: Progress) -> bool:
    """Early stopping's rule: `patience` epochs without a better one, before the last epoch (which ends the
    run anyway, as finished)."""
    return bool(cfg.patience) and progress.epochs_since_best >= cfg.patience and progress.epoch < cfg.epochs



def _end_epoch(run: Run, loop: EpochLoop, save_last: LastSaver, identity: dict[str, Any]) -> str | None:
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



def _finish(run: Run, loop: EpochLoop, status: str) -> None:
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



def _selected_name(cfg: TrainConfig) -> str:
    return "val balanced accuracy" if selected_by(cfg.class_weights) == "val_balanced_acc" else "val accuracy"



def _cache_note(source: BatchSource) -> str:
    if source.on_device is not None:
        return "decoded once, held in GPU memory"
    if source.images is not None:
        return "decoded once, memory-mapped"
    return f"off (decoding every epoch with {source.workers} worker(s))"



def _lr_note(cfg: TrainConfig) -> str:
    lr = effective_lr(cfg.lr, cfg.batch_size, cfg.lr_batch)
    return f"{lr:g}" + (f" = {cfg.lr:g} x {cfg.batch_size}/{cfg.lr_batch}" if lr != cfg.lr else "")



def _per_process(batch_size: int, world: int) -> str:
    share, extra = divmod(batch_size, world)
    return f"{share}" if extra == 0 else f"{share}-{share + 1}"



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

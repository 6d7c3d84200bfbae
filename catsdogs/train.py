"""Training a model on a split folder: config, data, model, optimizer, loop, checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from catsdogs.checkpoint import load_checkpoint, save_checkpoint, write_text_atomic
from catsdogs.config import TrainConfig, config_from_dict, config_to_yaml
from catsdogs.data import BatchSource, default_jobs, load_cache, read_split
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.hardware import Precision, select_device, select_precision, tune_allocator
from catsdogs.models import MODELS, build_model, load_pretrained
from catsdogs.optim import build_optimizer, get_optimizer_spec, load_optimizer_plugins, parameter_groups
from catsdogs.runs import RUNS_ROOT, new_run_dir
from catsdogs.schedules import SCHEDULERS, lr_factor
from catsdogs.ema import ModelEMA
from catsdogs.transforms import AUGMENTS, eval_preset, train_preset

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
# Settings a resumed run may change; everything else must match the checkpoint.
RESUMABLE_CHANGES = ("epochs", "device", "workers", "cache", "patience", "precision", "time_budget")
MAX_UNREADABLE_FRACTION = 0.01

Log = Callable[[str], None]


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
    fill = {"batch_size": spec.batch_size, **{k: spec.defaults.get(k) for k in ("lr", "momentum", "weight_decay")}}
    return dataclasses.replace(cfg, **{k: v for k, v in fill.items() if getattr(cfg, k) is None and v is not None})


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_val_acc: float
    status: str  # finished | early-stopped | time-budget | interrupted | nothing-to-do


class _StopRequest:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one aborts."""

    def __init__(self, log: Log) -> None:
        self.requested = False
        self.log = log

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\nstopping after this step and saving last.pt (press Ctrl-C again to quit at once)")


@contextmanager
def _stop_on_signals(log: Log) -> Iterator[_StopRequest]:
    stop = _StopRequest(log)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Global random states as plain values, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def format_history(rows: list[dict[str, Any]]) -> str:
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        lines.append(",".join(_fmt(row[c]) for c in HISTORY_COLUMNS))
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


@dataclass
class _Progress:
    """Where training stands: saved in last.pt so a resume continues exactly from here."""

    epoch: int = 0  # epochs fully done
    step: int = 0  # batches done inside the current epoch
    epoch_order_state: torch.Tensor | None = None  # order generator state at the epoch's start
    sums: tuple[float, int, int, float] = (0.0, 0, 0, 0.0)  # loss sum, correct, seen, seconds
    best_val_acc: float = -1.0
    epochs_since_best: int = 0
    stopped_early: bool = False
    budget_spent: bool = False
    global_step: int = 0  # optimizer steps taken in the whole run
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def train(cfg: TrainConfig | None, resume: str | Path | None = None, flags: Mapping[str, Any] | None = None,
          progress: bool = True, log: Log = print) -> TrainResult:
    """Train `cfg` into a new run folder, or continue the run in `resume`.

    When resuming, the config comes from the checkpoint and `flags` may change only
    RESUMABLE_CHANGES (raising --epochs, say); any other differing flag is refused.
    """
    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = load_checkpoint(run_dir / "last.pt")
        for stale in run_dir.glob(".*.tmp"):  # left by a writer that was killed mid-save
            stale.unlink(missing_ok=True)
        cfg = _resumed_config(state, flags or {}, run_dir)
    if cfg is None:
        raise ValueError("train() needs a config unless it resumes a run")
    cfg = resolve_config(cfg)
    device = select_device(cfg.device)
    precision = select_precision(cfg.precision, device)
    tune_allocator()

    train_split = read_split(cfg.data, "train", state["classes"] if state else None)
    val_split = read_split(cfg.data, "val", train_split.classes)
    jobs = default_jobs()
    images = {s.root.name: load_cache(s, cfg.image_size, cfg.cache, jobs, progress) for s in (train_split, val_split)}
    workers = cfg.workers if cfg.workers is not None else (0 if images["train"] is not None else max(jobs - 1, 0))
    train_source = BatchSource(train_split, train_preset(cfg.image_size, cfg.hflip, cfg.vflip, cfg.augment),
                               images["train"], workers, device)
    val_source = BatchSource(val_split, eval_preset(cfg.image_size), images["val"], workers, device)
    _check_unreadable(train_split.unreadable + val_split.unreadable, len(train_split) + len(val_split))

    _seed_everything(cfg.seed)
    model = build_model(cfg.model, len(train_split.classes), cfg.image_size)
    if cfg.pretrained and state is None:
        loaded = load_pretrained(model, cfg.model, cfg.pretrained)
        log(f"loaded {loaded} pretrained tensors into {cfg.model}")
    init_hash = _weights_hash(model)
    model = model.to(device, memory_format=torch.channels_last)
    spec = get_optimizer_spec(cfg.optim)
    optimizer = build_optimizer(cfg.optim, parameter_groups(model, cfg.weight_decay),
                                **_optimizer_overrides(cfg, spec.defaults))
    ema = ModelEMA(model, cfg.ema) if cfg.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scale_grads)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    progress_state = _Progress()

    if state is not None:
        model.load_state_dict(state.get("raw_model", state["model"]))
        if ema is not None:
            ema.load_state_dict(state["ema"], state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if precision.scale_grads and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress_state = _restore_progress(state)
        order_gen.set_state(state["order_gen"])
        aug_gen.set_state(state["aug_gen"])
        _set_rng_state(state["rng"])
        init_hash = state.get("init_hash", init_hash)
        spent = sum(row["seconds"] for row in progress_state.history)  # a raised --time-budget may go on
        progress_state.budget_spent = bool(cfg.time_budget) and spent >= cfg.time_budget * 60
        if progress_state.epoch >= cfg.epochs or progress_state.stopped_early or progress_state.budget_spent:
            why = ("stopped early" if progress_state.stopped_early else "used its time budget"
                   if progress_state.budget_spent else f"finished {progress_state.epoch} epochs")
            log(f"{run_dir} already {why}: nothing to do (raise --epochs to train longer)")
            return TrainResult(run_dir, progress_state.epoch, progress_state.best_val_acc, "nothing-to-do")
        write_text_atomic(run_dir / "config.yaml", config_to_yaml(cfg))
    else:
        run_dir = new_run_dir(cfg.out or RUNS_ROOT / cfg.optim)
        write_text_atomic(run_dir / "config.yaml", config_to_yaml(cfg))

    log(f"run folder: {run_dir}")
    log(f"device: {device.type}, {precision.note}, channels-last; "
        f"data: {cfg.data} ({len(train_source)} train / {len(val_source)} val images, "
        f"classes {', '.join(train_split.classes)}); cache: {_cache_note(train_source)}")
    log(f"model {cfg.model} at {cfg.image_size}px, optimizer {cfg.optim} (lr {cfg.lr:g}, batch {cfg.batch_size}), "
        f"{cfg.epochs} epochs")

    loop = _Loop(cfg, model, optimizer, scaler, precision, device, train_source, val_source, order_gen, aug_gen, ema)
    status = "finished"
    with _stop_on_signals(log) as stop:
        while progress_state.epoch < cfg.epochs:
            completed = loop.run_epoch(progress_state, stop, progress)
            if not completed:
                _save_last(run_dir, cfg, loop, progress_state, train_split.classes, init_hash)
                status = "interrupted"
                log(f"interrupted in epoch {progress_state.epoch + 1} after step {progress_state.step}; "
                    f"resume with: catsdogs train --resume {run_dir}")
                break
            row = progress_state.history[-1]
            improved = row["val_acc"] > progress_state.best_val_acc
            if improved:
                progress_state.best_val_acc, progress_state.epochs_since_best = row["val_acc"], 0
            else:
                progress_state.epochs_since_best += 1
            if progress_state.budget_spent:
                status = "time-budget"
            if cfg.patience and progress_state.epochs_since_best >= cfg.patience and progress_state.epoch < cfg.epochs:
                progress_state.stopped_early = True
            write_text_atomic(run_dir / "history.csv", format_history(progress_state.history))
            _save_last(run_dir, cfg, loop, progress_state, train_split.classes, init_hash)
            if improved:
                save_checkpoint(_model_state(cfg, loop.kept_model, progress_state, train_split.classes, init_hash),
                                run_dir / "best.pt")
            log(f"epoch {row['epoch']}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  {row['seconds']:.1f}s"
                + ("  (best)" if improved else ""))
            _check_unreadable(train_source.failed + val_source.failed, len(train_split) + len(val_split))
            if progress_state.budget_spent:
                log(f"time budget of {cfg.time_budget:g} min reached after {progress_state.global_step} steps")
                break
            if progress_state.stopped_early:
                status = "early-stopped"
                log(f"early stop: val accuracy has not improved for {cfg.patience} epochs "
                    f"(best {progress_state.best_val_acc:.4f})")
                break
    _write_status(run_dir, status, progress_state, cfg, init_hash, train_source, val_source)
    if status != "interrupted":
        log(f"best val accuracy {progress_state.best_val_acc:.4f}; next: catsdogs evaluate {run_dir}")
    return TrainResult(run_dir, progress_state.epoch, progress_state.best_val_acc, status)


def _cache_note(source: BatchSource) -> str:
    if source.on_device is not None:
        return "decoded once, held in GPU memory"
    if source.images is not None:
        return "decoded once, memory-mapped"
    return f"off (decoding every epoch with {source.workers} worker(s))"


def _optimizer_overrides(cfg: TrainConfig, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """lr always; momentum and weight_decay only when set, so Adam is not handed a momentum."""
    overrides: dict[str, Any] = {"lr": cfg.lr}
    for key in ("momentum", "weight_decay"):
        value = getattr(cfg, key)
        if value is not None and (key in defaults or value != 0):
            overrides[key] = value
    return overrides


def _resumed_config(state: Mapping[str, Any], flags: Mapping[str, Any], run_dir: Path) -> TrainConfig:
    saved = config_from_dict(state["config"], f"{run_dir / 'last.pt'}")
    changes = {}
    for key, value in flags.items():
        if value is None or value == getattr(saved, key):
            continue
        if key not in RESUMABLE_CHANGES:
            raise UsageError(f"--{key.replace('_', '-')} {value} conflicts with the run being resumed "
                             f"({key} = {getattr(saved, key)}); a resumed run keeps its {key}")
        changes[key] = value
    if "epochs" in changes and changes["epochs"] < state["progress"]["epoch"]:
        raise UsageError(f"--epochs {changes['epochs']} is fewer than the {state['progress']['epoch']} "
                         "epochs already done")
    return dataclasses.replace(saved, **changes)


def _restore_progress(state: Mapping[str, Any]) -> _Progress:
    saved = dict(state["progress"])
    saved["sums"] = tuple(saved["sums"])
    return _Progress(**saved)


def _model_state(cfg: TrainConfig, model: nn.Module, progress: _Progress, classes: list[str],
                 init_hash: str) -> dict[str, Any]:
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": cfg.to_dict(), "classes": list(classes), "epoch": progress.epoch,
            "val_acc": progress.history[-1]["val_acc"] if progress.history else None, "init_hash": init_hash}


def _save_last(run_dir: Path, cfg: TrainConfig, loop: "_Loop", progress: _Progress, classes: list[str],
               init_hash: str) -> None:
    state = _model_state(cfg, loop.kept_model, progress, classes, init_hash)
    if loop.ema is not None:  # "model" holds the averaged weights to use; a resume continues from raw_model
        state["raw_model"] = {k: v.detach().cpu() for k, v in loop.model.state_dict().items()}
        state["ema"] = loop.ema.state_dict()
    state.update({
        "optimizer": loop.optimizer.state_dict(), "scaler": loop.scaler.state_dict() if loop.scaler.is_enabled() else {},
        "order_gen": loop.order_gen.get_state(), "aug_gen": loop.aug_gen.get_state(), "rng": _rng_state(),
        "progress": dataclasses.asdict(progress),
    })
    save_checkpoint(state, run_dir / "last.pt")


def _write_status(run_dir: Path, status: str, progress: _Progress, cfg: TrainConfig, init_hash: str,
                  *sources: BatchSource) -> None:
    skipped = sorted({str(p) for s in sources for p in (s.failed + s.split.unreadable)})
    info = {"status": status, "epochs_done": progress.epoch, "epochs": cfg.epochs,
            "best_val_acc": progress.best_val_acc, "init_hash": init_hash, "unreadable_images": skipped}
    if status == "early-stopped":
        info["reason"] = f"val accuracy did not improve for {cfg.patience} epochs"
    write_text_atomic(run_dir / "status.json", json.dumps(info, indent=2) + "\n")


def _check_unreadable(paths: list[Path], total: int) -> None:
    if not paths:
        return
    names = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    if len(paths) > MAX_UNREADABLE_FRACTION * total:
        raise CatsdogsError(f"{len(paths)} of {total} images could not be read ({names}); "
                            "re-run `catsdogs split` on the source folder")
    print(f"warning: skipped {len(paths)} unreadable image(s): {names}", file=sys.stderr)


class _Loop:
    """The per-epoch work: training steps with progress, then validation."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, precision: Precision, device: torch.device,
                 train_source: BatchSource, val_source: BatchSource, order_gen: torch.Generator,
                 aug_gen: torch.Generator, ema: ModelEMA | None = None) -> None:
        self.cfg, self.model, self.optimizer, self.scaler, self.ema = cfg, model, optimizer, scaler, ema
        self.precision, self.device = precision, device
        self.train_source, self.val_source = train_source, val_source
        self.order_gen, self.aug_gen = order_gen, aug_gen
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps_per_epoch = math.ceil(len(train_source) / cfg.batch_size)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.budget_seconds = cfg.time_budget * 60.0 if cfg.time_budget else None

    def _total_steps(self, progress: _Progress, spent: float) -> int:
        """Steps the schedule spans: all epochs, or what the time budget allows at the pace so far."""
        planned = self.steps_per_epoch * self.cfg.epochs
        if self.budget_seconds is None or progress.global_step < 5 or spent <= 0:
            return planned
        pace = progress.global_step / spent
        estimate = progress.global_step + int(max(self.budget_seconds - spent, 0.0) * pace)
        return max(min(planned, estimate), progress.global_step + 1)

    def _set_lr(self, step_index: int, total: int) -> float:
        warmup = round(self.cfg.warmup_epochs * self.steps_per_epoch)
        factor = lr_factor(self.cfg.scheduler, step_index, total, warmup)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def run_epoch(self, progress: _Progress, stop: _StopRequest, show: bool) -> bool:
        """Train one epoch (or its remainder after a resume); False when stopped part-way."""
        if progress.step == 0 or progress.epoch_order_state is None:
            progress.epoch_order_state = self.order_gen.get_state()
            progress.sums = (0.0, 0, 0, 0.0)
        else:
            self.order_gen.set_state(progress.epoch_order_state)
        order = self.train_source.order(self.cfg.batch_size, self.order_gen)
        loss_sum, correct, seen, seconds = progress.sums
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(total=len(order), initial=progress.step, desc=f"epoch {progress.epoch + 1}/{self.cfg.epochs}",
                   unit="batch", disable=not show, leave=False)
        before = sum(row["seconds"] for row in progress.history)  # training time of earlier epochs
        lr = self._set_lr(progress.global_step, self._total_steps(progress, before + seconds))
        for images, labels in self.train_source.batches(order[progress.step:], pin=self.device.type == "cuda"):
            elapsed = seconds + time.perf_counter() - started
            lr = self._set_lr(progress.global_step, self._total_steps(progress, before + elapsed))
            batch_loss, batch_correct = self._step(images, labels)
            loss_sum += batch_loss * len(labels)
            correct += batch_correct
            seen += len(labels)
            progress.step += 1
            progress.global_step += 1
            elapsed = seconds + time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
            bar.update()
            if self.budget_seconds is not None and before + elapsed >= self.budget_seconds:
                progress.budget_spent = True  # end this epoch early: validate and record it
                break
            if stop.requested and progress.step < len(order):
                progress.sums = (loss_sum, correct, seen, seconds + time.perf_counter() - started)
                bar.close()
                return False
        bar.close()
        val_loss, val_acc = self.validate()
        elapsed = seconds + time.perf_counter() - started
        progress.epoch += 1
        progress.step = 0
        progress.epoch_order_state = None
        progress.sums = (0.0, 0, 0, 0.0)
        progress.history.append({
            "epoch": progress.epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": round(elapsed, 3)})
        return True

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        images = self.train_source.preset(images.to(self.device, non_blocking=True), self.aug_gen)
        labels = labels.to(self.device, non_blocking=True)
        with self.precision.autocast(self.device):
            logits = self.model(images)
            loss = self.loss_fn(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return float(loss.detach()), int((logits.argmax(1) == labels).sum())

    @property
    def kept_model(self) -> nn.Module:
        """The model to validate and save: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        return evaluate_source(self.kept_model, self.val_source, self.precision, self.device, self.cfg.batch_size)[:2]


@torch.no_grad()
def evaluate_source(model: nn.Module, source: BatchSource, precision: Precision, device: torch.device,
                    batch_size: int, show: bool = False, tta: bool = False
                    ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean loss, accuracy, softmax probabilities and labels of `source`, in file order.

    With `tta`, each image's probabilities are the mean over the image and its mirror image.
    """
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, probs, labels_all = 0.0, [], []
    order = source.order(max(batch_size, 64), None)
    for images, labels in tqdm(source.batches(order), total=len(order), desc="evaluating", unit="batch",
                               disable=not show, leave=False):
        images = source.preset(images.to(device, non_blocking=True))
        labels = labels.to(device)
        with precision.autocast(device):
            logits = model(images).float()
            if tta:
                batch_probs = (torch.softmax(logits, 1) + torch.softmax(model(images.flip(3)).float(), 1)) / 2
        if tta:
            loss_sum += float(nn.functional.nll_loss(torch.log(batch_probs.clamp_min(1e-12)), labels, reduction="sum"))
        else:
            batch_probs = torch.softmax(logits, 1)
            loss_sum += float(loss_fn(logits, labels))
        probs.append(batch_probs.cpu())
        labels_all.append(labels.cpu())
    model.train(was_training)
    if not probs:
        raise CatsdogsError(f"no readable images in {source.split.root}")
    p, y = torch.cat(probs).numpy(), torch.cat(labels_all).numpy()
    return loss_sum / len(y), float((p.argmax(1) == y).mean()), p, y


def print_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML, exactly as the run folder's config.yaml would hold it."""
    return yaml.safe_dump(resolve_config(cfg).to_dict(), sort_keys=False)

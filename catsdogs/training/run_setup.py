"""The stages that set a run up before its first epoch.

Where it trains, its photos, its first weights, its batches, and what training changes (model, optimizer,
EMA, generators).
"""

from __future__ import annotations

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
from catsdogs.data.transforms import Preset, eval_preset, train_preset
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.training.config import TrainConfig
from catsdogs.training.distributed import Team, gather, start, wait_for_all
from catsdogs.training.ema import ModelEMA
from catsdogs.training.hardware import Precision, select_device, select_precision
from catsdogs.training.lookahead import Lookahead
from catsdogs.training.loop import Log
from catsdogs.training.models import build_model, head_name, load_pretrained
from catsdogs.training.optim import build_optimizer, get_optimizer_spec, parameter_groups
from catsdogs.training.resume import check_same_split, data_fingerprint, point_best_at
from catsdogs.training.state import RANK_SEED_STRIDE, TrainState
from catsdogs.training.tricks import effective_lr, set_bn_momentum

MAX_UNREADABLE_FRACTION = 0.01


def training_preset(cfg: TrainConfig) -> Preset:
    """How the run's training images reach the model: resize, its augmentation and flips, normalise."""
    return train_preset(cfg.image_size, cfg.hflip, cfg.vflip, cfg.augment)


def training_generators(seed: int, rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """The run's batch-order generator (the same in every process, whose batches are then shared out)
    and process `rank`'s augmentation generator. `catsdogs show --augment` draws with these too."""
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1 + RANK_SEED_STRIDE * rank)
    return order_gen, aug_gen



@dataclass(frozen=True)
class Hardware:
    """Where the run trains, and how the log and status.json name it."""
    device: torch.device
    precision: Precision
    note: str



@dataclass(frozen=True)
class Splits:
    """The train and val photos, and their fingerprint (what a resume checks it trains on)."""
    train: ImageSplit
    val: ImageSplit
    fingerprint: str



@dataclass(frozen=True)
class Sources:
    """The batches of train and val photos, and the unreadable files already named in a warning."""
    train: BatchSource
    val: BatchSource
    warned: set[Path]



def choose_hardware(cfg: TrainConfig, team: Team) -> Hardware:
    """The device and precision the run trains with, and how the log and status.json name them."""
    device = start(team, cfg.device) if team.enabled else select_device(cfg.device)
    precision = select_precision(cfg.precision, device)
    hardware = f"{device.type}, {precision.note}" + (f", {team.world} processes (torchrun)" if team.enabled else "")
    tune_allocator()
    return Hardware(device, precision, hardware)



def read_splits(cfg: TrainConfig, state: dict[str, Any] | None, run_dir: Path | None, team: Team) -> Splits:
    """The train and val photos and their fingerprint; a resume checks they are the ones it trained on."""
    train_split = read_split(cfg.data, "train", state["classes"] if state else None)
    val_split = read_split(cfg.data, "val", train_split.classes)
    fingerprint = data_fingerprint(train_split, val_split)
    if state is not None:
        check_same_split(state, fingerprint, cfg.data, run_dir)
        if team.main:
            point_best_at(run_dir, cfg.data)
    return Splits(train_split, val_split, fingerprint)



def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]



def initial_model(cfg: TrainConfig, state: dict[str, Any] | None, train_split: ImageSplit,
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
    return model, weights_hash(model)



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



def open_data(cfg: TrainConfig, splits: Splits, device: torch.device, rebuild: bool, progress: bool, team: Team,
               log: Log) -> Sources:
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
    check_unreadable((train_source, val_source), team, warned, cfg.data, log)
    return Sources(train_source, val_source, warned)



def build_state(cfg: TrainConfig, model: nn.Module, device: torch.device, precision: Precision,
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



def _optimizer_overrides(cfg: TrainConfig, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """lr always; momentum and weight_decay only when set, so Adam is not handed a momentum."""
    overrides: dict[str, Any] = {"lr": effective_lr(cfg.lr, cfg.batch_size, cfg.lr_batch)}
    for key in ("momentum", "weight_decay"):
        value = getattr(cfg, key)
        if value is not None and (key in defaults or value != 0):
            overrides[key] = value
    return overrides



def check_unreadable(sources: tuple[BatchSource, ...], team: Team, warned: set[Path], data: str, log: Log) -> None:
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

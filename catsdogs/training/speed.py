"""How fast this machine trains a model: seconds per training image, measured on random images.

A few timed steps at each of a schedule's image sizes, each as training takes it: a batch gathered from
a pool of uint8 photos (as the cache hands them out), the augmentation (and the scaling down of
progressive resizing), then forward, backward, an SGD update and, where the run keeps one, the update of
the weight average; in the precision and on the device the run will use. Each epoch also validates, so
the validation's forward passes are timed too and counted per training image. It leaves the process as
it found it (no thread or allocator change); the model it builds is thrown away.

A probe of a second or two is noisy (a quarter from one call to the next was seen on a 2-core machine):
each size is timed in `repeats` windows and the median window counts.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from catsdogs.data.transforms import eval_preset, train_preset
from catsdogs.training.ema import ModelEMA
from catsdogs.training.hardware import Precision
from catsdogs.training.models import build_model
from catsdogs.training.scoring import score_batch

WARMUP_STEPS = 3
EVAL_PROBE_BATCH = 32  # validation's cost an image hardly depends on its batch; a small one warms up fast
POOL_BATCHES = 4  # the pool a batch is gathered from, in batches: a gather copies, as the cache's does


@dataclass(frozen=True)
class Probe:
    """What a run does with each training image besides the model's own work, from its config."""

    batch_size: int
    augment: str = "flip"
    ema: float | None = None  # the weight average's decay, when the run keeps one
    val_share: float = 0.0  # validation photos per training photo: each epoch validates them once
    seconds: float = 1.0  # timed at each image size
    repeats: int = 3  # windows the time is split into; the median one counts


def seconds_per_image(model_name: str, image_size: int, device: torch.device, precision: Precision, probe: Probe,
                      view_size: int | None = None, max_steps: int = 50) -> float:
    """Training seconds per image of `model_name` on `image_size` photos (scaled down to `view_size` when
    given, as progressive resizing does), doing what `probe` says the run does, timed over about
    `probe.seconds` after warm-up: the median of `probe.repeats` windows."""
    batch_size = probe.batch_size
    model = build_model(model_name, 2, image_size).to(device, memory_format=torch.channels_last)
    model.train()
    average = ModelEMA(model, probe.ema) if probe.ema else None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (batch_size * POOL_BATCHES, image_size, image_size, 3), dtype=torch.uint8,
                         generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
    preset = train_preset(image_size, hflip=0.5, augment=probe.augment)

    def step() -> None:
        picked = torch.randint(0, len(pool), (batch_size,), generator=generator)
        images = preset(pool[picked].to(device), generator, view_size)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            loss = loss_fn(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
        float(loss.detach())  # the loop reads each step's loss, which waits for the step

    return _timed(step, device, batch_size, probe.seconds, max_steps, probe.repeats)


def eval_seconds_per_image(model_name: str, image_size: int, device: torch.device, precision: Precision,
                           seconds: float = 0.5, max_steps: int = 20, repeats: int = 1) -> float:
    """Validation seconds per image: forward passes in eval mode at `image_size`."""
    model = build_model(model_name, 2, image_size).to(device, memory_format=torch.channels_last).eval()
    generator = torch.Generator().manual_seed(0)
    photos = torch.randint(0, 256, (EVAL_PROBE_BATCH, image_size, image_size, 3), dtype=torch.uint8,
                           generator=generator)
    preset = eval_preset(image_size)

    def step() -> None:
        score_batch(model, preset(photos.to(device)), precision, device)[1].cpu()

    return _timed(step, device, EVAL_PROBE_BATCH, seconds, max_steps, repeats)


def schedule_seconds_per_image(model_name: str, image_size: int, progressive_size: int | None, fraction: float,
                               device: torch.device, precision: Precision, probe: Probe) -> float:
    """Seconds per training image averaged over a progressive schedule (`fraction` of the steps at
    `progressive_size`), with each epoch's validation shared out over its training images."""
    train = seconds_per_image(model_name, image_size, device, precision, probe)
    if progressive_size:
        low = seconds_per_image(model_name, image_size, device, precision, probe, view_size=progressive_size)
        train = fraction * low + (1.0 - fraction) * train
    if probe.val_share <= 0:
        return train
    validate = eval_seconds_per_image(model_name, image_size, device, precision, probe.seconds / 2,
                                      repeats=probe.repeats)
    return train + probe.val_share * validate


def _timed(step: Callable[[], None], device: torch.device, images_per_step: int, seconds: float, max_steps: int,
           repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per image of `step` after warm-up: the median of `repeats` windows of about seconds / repeats."""
    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    windows = []
    repeats = max(1, repeats)
    window, most = seconds / repeats, max(1, max_steps // repeats)
    for _ in range(repeats):
        steps, started = 0, clock()
        while steps < most and (steps == 0 or clock() - started < window):
            step()
            steps += 1
            _sync(device)
        windows.append((clock() - started) / (steps * images_per_step))
    return statistics.median(windows)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

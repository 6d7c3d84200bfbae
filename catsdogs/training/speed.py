"""How fast this machine trains a model: seconds per training image, measured on random images.

A few timed steps at each of a schedule's image sizes, each as training takes it: the augmentation
(and the scaling down of progressive resizing) on a uint8 batch, then forward, backward and an SGD
update, in the precision and on the device the run will use. It leaves the process as it found it (no thread or
allocator change); the model it builds is thrown away.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from catsdogs.data.transforms import train_preset
from catsdogs.training.hardware import Precision
from catsdogs.training.models import build_model

WARMUP_STEPS = 2


def seconds_per_image(model_name: str, image_size: int, batch_size: int, device: torch.device, precision: Precision,
                      seconds: float = 1.0, max_steps: int = 50, view_size: int | None = None,
                      augment: str = "flip") -> float:
    """Training seconds per image of `model_name` on `image_size` photos (scaled down to `view_size` when
    given, as progressive resizing does), timed over about `seconds` after warm-up."""
    model = build_model(model_name, 2, image_size).to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    photos = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
    preset = train_preset(image_size, hflip=0.5, augment=augment)

    def step() -> None:
        images = preset(photos.to(device), generator, view_size)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            loss = loss_fn(model(images).float(), labels)
        loss.backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    steps, started = 0, time.perf_counter()
    while steps < max_steps and (steps == 0 or time.perf_counter() - started < seconds):
        step()
        steps += 1
        _sync(device)
    return (time.perf_counter() - started) / (steps * batch_size)


def schedule_seconds_per_image(model_name: str, image_size: int, progressive_size: int | None, fraction: float,
                               batch_size: int, device: torch.device, precision: Precision,
                               seconds: float = 1.0, augment: str = "flip") -> float:
    """Seconds per image averaged over a progressive schedule: `fraction` of the steps at `progressive_size`."""
    full = seconds_per_image(model_name, image_size, batch_size, device, precision, seconds, augment=augment)
    if not progressive_size:
        return full
    low = seconds_per_image(model_name, image_size, batch_size, device, precision, seconds,
                            view_size=progressive_size, augment=augment)
    return fraction * low + (1.0 - fraction) * full


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

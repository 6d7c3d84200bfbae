"""How fast this machine trains a model: seconds per training image, measured on random images.

A few timed steps of forward, backward and an SGD update at each of a schedule's image sizes, in the
precision and on the device the run will use. It leaves the process as it found it (no thread or
allocator change); the model it builds is thrown away.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from catsdogs.training.hardware import Precision
from catsdogs.training.models import build_model

WARMUP_STEPS = 2


def seconds_per_image(model_name: str, image_size: int, batch_size: int, device: torch.device, precision: Precision,
                      seconds: float = 1.0, max_steps: int = 50) -> float:
    """Training seconds per image of `model_name` at `image_size`, timed over about `seconds` after warm-up."""
    model = build_model(model_name, 2, image_size).to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(
        device, memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)

    def step() -> None:
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
                               seconds: float = 1.0) -> float:
    """Seconds per image averaged over a progressive schedule: `fraction` of the steps at `progressive_size`."""
    full = seconds_per_image(model_name, image_size, batch_size, device, precision, seconds)
    if not progressive_size:
        return full
    low = seconds_per_image(model_name, progressive_size, batch_size, device, precision, seconds)
    return fraction * low + (1.0 - fraction) * full


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

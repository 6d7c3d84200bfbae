"""Learning-rate schedules as data: each maps training progress (0..1) to a factor of the base lr."""

from __future__ import annotations

import math
from typing import Callable

from catsdogs.registry import Registry

Schedule = Callable[[float], float]
SCHEDULERS: Registry[Schedule] = Registry("scheduler")


def register_scheduler(name: str) -> Callable[[Schedule], Schedule]:
    return SCHEDULERS.register(name)


def list_schedulers() -> list[str]:
    return SCHEDULERS.names()


@register_scheduler("constant")
def constant(progress: float) -> float:
    """The base learning rate throughout (the tutorial's choice)."""
    return 1.0


@register_scheduler("step")
def step(progress: float) -> float:
    """A tenth of the rate after half of training, a hundredth after three quarters."""
    return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01


@register_scheduler("cosine")
def cosine(progress: float) -> float:
    """Half a cosine from the base rate down to zero."""
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@register_scheduler("onecycle")
def onecycle(progress: float) -> float:
    """Up from 1/25 of the rate over the first 30%, then a cosine down to nearly zero."""
    rise = 0.3
    if progress < rise:
        return 0.04 + 0.96 * progress / rise
    return 1e-4 + (1.0 - 1e-4) * cosine((progress - rise) / (1.0 - rise))


def depends_on_length(name: str) -> bool:
    """Whether schedule `name` moves over training (at any whole percent of it), so that its steps are
    planned over the run's length; only a flat schedule's are not."""
    schedule = SCHEDULERS.get(name)
    return any(schedule(percent / 100) != schedule(0.0) for percent in range(101))


def lr_factor(name: str, step_index: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The factor for optimizer step `step_index` (0-based) of `total_steps`, with linear warmup."""
    schedule = SCHEDULERS.get(name)
    if warmup_steps and step_index < warmup_steps:
        return schedule(0.0) * (step_index + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return schedule((step_index - warmup_steps) / span)

"""auto (`frontier: true`): before a new run starts, choose what to train from the compute frontier.

It times each candidate of the frontier on this machine (speed.py), in the run's precision and on its
device, and hands frontier.choose_point the seconds per image; the chosen candidate's model, image sizes
and an epoch cap replace the config's. The time budget then fits the schedule to the real pace, as
for any recipe. The seconds spent measuring are not part of the budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from catsdogs.training.config import TrainConfig
from catsdogs.training.distributed import Team, from_main
from catsdogs.training.frontier import Candidate, Frontier, as_settings, choose_point, describe, frontier_record, \
    load_frontier
from catsdogs.training.hardware import Precision
from catsdogs.training.speed import schedule_seconds_per_image

PROBE_SECONDS = 0.5  # timed at each image size of a candidate's schedule, after warm-up steps

Measure = Callable[[Candidate, torch.device, Precision, int, str], float]


def measure_candidate(candidate: Candidate, device: torch.device, precision: Precision, batch_size: int,
                      augment: str) -> float:
    """Seconds per training image of the candidate's schedule on this machine, at the batch size it trains
    with (the candidate's own, else the run's: a larger batch trains more images a second), with the run's
    augmentation (a random crop costs more a step than a flip)."""
    batch = int(candidate.extra.get("batch_size", batch_size))
    return schedule_seconds_per_image(candidate.model, candidate.image_size, candidate.progressive_size,
                                      candidate.progressive_fraction, batch, device, precision, PROBE_SECONDS,
                                      augment=augment)


def choose_from_frontier(cfg: TrainConfig, device: torch.device, precision: Precision, train_images: int,
                         team: Team, log: Callable[[str], None], frontier: Frontier | None = None,
                         measure: Measure | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The config with the frontier's best candidate for cfg.time_budget minutes, and the record of why."""
    frontier = frontier if frontier is not None else load_frontier()
    measure = measure or measure_candidate
    speeds = None
    if team.main:  # one measurement, told to every process, so that all train the same choice
        log(f"auto: timing {len(frontier.candidates)} candidates on this machine ({precision.name})")
        timed: dict[tuple, float] = {}  # a trick that only changes the first weights trains at its base's speed
        speeds = {}
        for name, c in frontier.candidates.items():
            if frontier.of(name):
                key = (c.model, c.image_size, c.progressive_size, c.progressive_fraction,
                       c.extra.get("batch_size", cfg.batch_size))
                if key not in timed:
                    timed[key] = measure(c, device, precision, cfg.batch_size, cfg.augment)
                speeds[name] = timed[key]
    speeds = from_main(speeds, team)
    choice = choose_point(frontier, speeds, cfg.time_budget, train_images)
    for line in describe(choice, cfg.time_budget, precision.name):
        log(line)
    return dataclasses.replace(cfg, **as_settings(choice)), frontier_record(choice, cfg.time_budget, frontier)

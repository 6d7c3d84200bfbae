"""auto (`frontier: true`): before a new run starts, choose what to train from the compute frontier.

It times each candidate of the frontier on this machine (speed.py), in the run's precision and on its
device, doing what the run does with each image (its batch size, augmentation, weight average and its
share of each epoch's validation), and hands frontier.choose_point the seconds per training image; the
chosen candidate's model, image sizes and an epoch cap replace the config's. The time budget then fits
the schedule to the real pace, as for any recipe. The seconds spent measuring are not part of the budget.
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
from catsdogs.training.speed import Probe, schedule_seconds_per_image

PROBE_SECONDS = 1.0  # timed at each image size of a candidate's schedule, after warm-up steps
PROBE_REPEATS = 3  # ... in this many windows, the median one counting

Measure = Callable[[Candidate, torch.device, Precision, Probe], float]


def run_probe(cfg: TrainConfig, train_images: int, val_images: int) -> Probe:
    """What the run does with each image besides the model's work, as the probe times it."""
    return Probe(batch_size=cfg.batch_size, augment=cfg.augment, ema=cfg.ema or None,
                 val_share=val_images / max(train_images, 1), seconds=PROBE_SECONDS, repeats=PROBE_REPEATS)


def candidate_probe(candidate: Candidate, probe: Probe) -> Probe:
    """The run's probe at the batch size and with the augmentation the candidate trains with (its own, else
    the run's: a larger batch trains more images a second, and a random crop costs more a step than a flip)."""
    return dataclasses.replace(probe, batch_size=int(candidate.extra.get("batch_size", probe.batch_size)),
                               augment=str(candidate.extra.get("augment", probe.augment)))


def measure_candidate(candidate: Candidate, device: torch.device, precision: Precision, probe: Probe) -> float:
    """Seconds per training image of the candidate's schedule on this machine, doing what it does with each
    image (candidate_probe), with the run's weight average and validation share."""
    probe = candidate_probe(candidate, probe)
    return schedule_seconds_per_image(candidate.model, candidate.image_size, candidate.progressive_size,
                                      candidate.progressive_fraction, device, precision, probe)


def choose_from_frontier(cfg: TrainConfig, device: torch.device, precision: Precision, train_images: int,
                         val_images: int, team: Team, log: Callable[[str], None], frontier: Frontier | None = None,
                         measure: Measure | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The config with the frontier's best candidate for cfg.time_budget minutes, and the record of why."""
    frontier = frontier if frontier is not None else load_frontier()
    measure = measure or measure_candidate
    speeds, probe = None, run_probe(cfg, train_images, val_images)
    if team.main:  # one measurement, told to every process, so that all train the same choice
        log(f"auto: timing {len(frontier.candidates)} candidates on this machine ({precision.name})")
        timed: dict[tuple, float] = {}  # a trick that only changes the first weights trains at its base's speed
        speeds = {}
        for name, c in frontier.candidates.items():
            if frontier.of(name):
                key = (c.model, c.image_size, c.progressive_size, c.progressive_fraction, candidate_probe(c, probe))
                if key not in timed:
                    timed[key] = measure(c, device, precision, probe)
                speeds[name] = timed[key]
    speeds = from_main(speeds, team)
    choice = choose_point(frontier, speeds, cfg.time_budget, train_images)
    for line in describe(choice, cfg.time_budget, precision.name):
        log(line)
    record = {**frontier_record(choice, cfg.time_budget, frontier), "probe": dataclasses.asdict(probe)}
    return dataclasses.replace(cfg, **as_settings(choice)), record

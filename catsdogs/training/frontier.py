"""The compute frontier: which model and image sizes train best for a budget of training FLOPs.

`benchmarks/build_frontier.py` measures it once, independent of the machine: each candidate (a model
and its progressive image sizes) trains for the whole number of epochs its budget buys, with no time
limit, so the result depends on FLOPs only. The points are kept in `frontier.json` beside this module.

`choose_point` turns this machine's minutes into each candidate's FLOPs (from its measured speed,
see speed.py), predicts each candidate's accuracy at those FLOPs from its measured points, and picks
the best. `configs/recipes/auto.yaml` (`frontier: true`) asks `train` to do this before it starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from catsdogs.errors import CatsdogsError

FRONTIER_FILE = Path(__file__).with_name("frontier.json")
# A measured training run computes about 3x the forward pass's FLOPs (backward: about 2x).
TRAIN_FLOPS_PER_FORWARD = 3.0
# auto sets the epoch cap this much above the epochs its speed estimate expects, so that the time
# budget, which fits the schedule to the real pace, is what ends a run. A probe of a few seconds was
# seen 38% slower than the run it timed (docs/benchmarks.md): with a cap of 1.25 times, that run ended at
# its cap 13 s before its 4 minutes. Twice leaves room for a probe up to half as fast as the run.
EPOCH_HEADROOM = 2.0


@dataclass(frozen=True)
class Candidate:
    """A model and its image sizes: the first `progressive_fraction` of the steps at `progressive_size`
    (None: none), the rest at `image_size`."""

    name: str
    model: str
    image_size: int
    progressive_size: int | None
    progressive_fraction: float
    train_gflop: float  # training GFLOP per image, averaged over the schedule's sizes
    # other TrainConfig keys it sets: a trick of the fast recipes (tricks.py), or its batch size
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The TrainConfig keys this candidate sets."""
        return {"model": self.model, "image_size": self.image_size, "progressive_size": self.progressive_size or 0,
                "progressive_fraction": self.progressive_fraction, **self.extra}


@dataclass(frozen=True)
class Point:
    """One candidate trained at one budget: the epochs it bought and its accuracy on held-back photos, per seed."""

    candidate: str
    budget_tflop: float
    epochs: int
    tflop: float  # what those whole epochs cost on the frontier's training photos
    accuracy: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.accuracy) / len(self.accuracy)

    @property
    def spread(self) -> float:
        """How far apart its seeds landed (0 with one seed)."""
        return max(self.accuracy) - min(self.accuracy)


@dataclass(frozen=True)
class Frontier:
    candidates: dict[str, Candidate]
    points: tuple[Point, ...]
    train_images: int  # photos each epoch of the frontier's runs went through
    command: str  # the commands that measured it, joined by "; "
    source: str

    def of(self, name: str) -> list[Point]:
        """A candidate's points, cheapest first."""
        return sorted((p for p in self.points if p.candidate == name), key=lambda p: p.tflop)

    def best(self) -> list[Point]:
        """The best point at each measured budget."""
        budgets = sorted({p.budget_tflop for p in self.points})
        return [max((p for p in self.points if p.budget_tflop == b), key=lambda p: p.mean) for b in budgets]


@dataclass(frozen=True)
class Choice:
    """What auto trains, and why: the candidate, the FLOPs and epochs the minutes buy, and the prediction."""

    candidate: Candidate
    tflop: float
    epochs: int
    predicted: float
    seconds_per_image: float
    note: str  # "" inside the measured range, else what the prediction rests on
    # (name, affordable TFLOP, predicted, the largest TFLOP it was measured at) of every candidate
    others: tuple[tuple[str, float, float, float], ...]
    # the other candidates predicted closer to the chosen one than the seeds of the points either rests on
    # are to each other: the frontier cannot tell them apart here (name, predicted, that spread)
    level: tuple[tuple[str, float, float], ...] = ()


def candidate_gflop(forward_gflop: Mapping[int, float], image_size: int, progressive_size: int | None,
                    fraction: float) -> float:
    """Training GFLOP per image of a schedule, from the forward GFLOP at each of its sizes."""
    full = TRAIN_FLOPS_PER_FORWARD * forward_gflop[image_size]
    if not progressive_size:
        return full
    return fraction * TRAIN_FLOPS_PER_FORWARD * forward_gflop[progressive_size] + (1.0 - fraction) * full


def load_frontier(path: str | Path | None = None) -> Frontier:
    """The measured frontier (the package's own unless `path`); a clear error when it is missing or broken."""
    path = Path(path) if path is not None else FRONTIER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        candidates = {name: Candidate(name=name, **fields) for name, fields in data["candidates"].items()}
        points = tuple(Point(candidate=p["candidate"], budget_tflop=float(p["budget_tflop"]), epochs=int(p["epochs"]),
                             tflop=float(p["tflop"]), accuracy=tuple(float(a) for a in p["accuracy"]))
                       for p in data["points"] if p.get("accuracy"))
        frontier = Frontier(candidates, points, int(data["train_images"]), "; ".join(data["commands"]), str(path))
    except FileNotFoundError:
        raise CatsdogsError(f"no compute frontier at {path}: rebuild it with benchmarks/build_frontier.py") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CatsdogsError(f"{path} is not a compute frontier ({type(exc).__name__}: {exc}): rebuild it with "
                            "benchmarks/build_frontier.py") from None
    if not any(frontier.of(name) for name in candidates):
        raise CatsdogsError(f"{path} holds no measured point: run benchmarks/build_frontier.py")
    return frontier


def held_beyond(tflop: float, largest: float) -> bool:
    """Whether a prediction at `tflop` is held from a measured point more than a quarter smaller (`largest`),
    which auto says: a floor, that says little where the point is far smaller."""
    return tflop > largest * 1.25


def predict(points: list[Point], tflop: float) -> tuple[float, str]:
    """A candidate's accuracy at `tflop`, interpolated in log FLOPs between its measured points. Beyond
    the largest, the largest's accuracy (never more); below the smallest, -inf: unknown, so not chosen
    while another candidate is in range."""
    if tflop < points[0].tflop * 0.8:  # a fifth below the cheapest point: whole epochs round that much
        return -math.inf, f"below its cheapest measured point ({points[0].tflop:.3g} TFLOP)"
    if tflop >= points[-1].tflop:
        return points[-1].mean, (f"beyond its largest measured point ({points[-1].tflop:.3g} TFLOP): predicted "
                                 "as that point's accuracy" if held_beyond(tflop, points[-1].tflop) else "")
    for low, high in zip(points, points[1:]):
        if tflop <= high.tflop:
            if tflop <= low.tflop:
                return low.mean, ""
            share = math.log(tflop / low.tflop) / math.log(high.tflop / low.tflop)
            return low.mean + share * (high.mean - low.mean), ""
    return points[-1].mean, ""


def spread_at(points: list[Point], tflop: float) -> float:
    """How far apart the seeds of the measured points that a prediction at `tflop` rests on landed: the
    nearest point's beyond either end, the larger of the two points' in between."""
    if tflop <= points[0].tflop:
        return points[0].spread
    if tflop >= points[-1].tflop:
        return points[-1].spread
    high = next(i for i, p in enumerate(points) if tflop <= p.tflop)
    return max(points[high - 1].spread, points[high].spread)


def choose_point(frontier: Frontier, seconds_per_image: Mapping[str, float], minutes: float,
                 train_images: int) -> Choice:
    """The candidate with the best predicted accuracy for `minutes` of training at the measured speeds
    (seconds per training image, over its schedule's sizes); if none is in its measured range, the one
    that buys the most epochs. The choice names the candidates it is level with."""
    options = []
    for name, seconds in seconds_per_image.items():
        candidate, points = frontier.candidates[name], frontier.of(name)
        if not points:
            continue
        images = minutes * 60.0 / seconds
        tflop = images * candidate.train_gflop / 1000.0
        predicted, note = predict(points, tflop)
        options.append((predicted, images / train_images, candidate, tflop, note, seconds, points[-1].tflop,
                        spread_at(points, tflop)))
    if not options:
        raise CatsdogsError("no candidate of the frontier was measured: rebuild it with benchmarks/build_frontier.py")
    best = max(options, key=lambda o: (o[0], o[1]))
    predicted, epochs, candidate, tflop, note, seconds, _, spread = best
    if predicted == -math.inf:
        note = "every candidate is below its cheapest measured point: training the one that buys the most epochs"
    level = tuple((o[2].name, o[0], max(spread, o[7])) for o in options
                  if o is not best and o[0] != -math.inf and predicted - o[0] < max(spread, o[7]))
    return Choice(candidate, tflop, max(1, math.ceil(epochs * EPOCH_HEADROOM)), predicted, seconds, note,
                  tuple((o[2].name, o[3], o[0], o[6]) for o in options), level)


def describe(choice: Choice, minutes: float, precision: str) -> list[str]:
    """The lines auto prints: the measured speeds, the budget in FLOPs, and the chosen point."""
    lines = [f"auto: {minutes:g} minutes in {precision}; each candidate's measured speed turned into the FLOPs it "
             "can train, and its accuracy there read off the compute frontier:"]
    for name, tflop, predicted, largest in choice.others:
        shown = "unknown" if predicted == -math.inf else f"{predicted:.1%}"
        held = f" (measured only up to {largest:.3g} TFLOP)" if held_beyond(tflop, largest) else ""
        lines.append(f"  {name:<6} {tflop:7.3g} TFLOP  predicted {shown}{held}")
    c = choice.candidate
    sizes = f"{c.progressive_size} then {c.image_size} px" if c.progressive_size else f"{c.image_size} px"
    lines.append(f"auto: chose {c.name} ({c.model}, {sizes}): {choice.tflop:.3g} TFLOP, about "
                 f"{choice.seconds_per_image * 1000:.2f} ms a training image (validation included), "
                 f"epoch cap {choice.epochs}"
                 + (f"; {choice.note}" if choice.note else ""))
    for name, predicted, spread in choice.level:
        lines.append(f"auto: {name} is level with {c.name} here: predicted {(choice.predicted - predicted) * 100:.1f} "
                     f"points lower, while the seeds of the frontier's points they rest on landed up to "
                     f"{spread * 100:.1f} points apart; the frontier cannot tell which trains better in this budget")
    return lines


def as_settings(choice: Choice) -> dict[str, Any]:
    """The config keys auto replaces: the candidate's model and sizes, and the epoch cap."""
    return {**choice.candidate.settings(), "epochs": choice.epochs}


def frontier_record(choice: Choice, minutes: float, frontier: Frontier) -> dict[str, Any]:
    """What the run folder keeps of the choice (auto.json)."""
    return {"minutes": minutes, "chosen": choice.candidate.name, "tflop": round(choice.tflop, 3),
            "epochs": choice.epochs, "predicted_accuracy": None if choice.predicted == -math.inf else choice.predicted,
            "seconds_per_image": choice.seconds_per_image, "note": choice.note,
            "candidates": [{"name": n, "tflop": round(t, 3), "predicted_accuracy": None if p == -math.inf else p,
                            "largest_measured_tflop": largest} for n, t, p, largest in choice.others],
            "level_with": [{"name": n, "predicted_accuracy": p, "seed_spread": round(spread, 5)}
                           for n, p, spread in choice.level],
            "frontier": {"source": frontier.source, "command": frontier.command},
            "candidate": dataclasses.asdict(choice.candidate)}

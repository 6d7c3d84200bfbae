"""auto (configs/recipes/auto.yaml): the compute frontier, the choice for a machine's speed, and training it."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from catsdogs.errors import CatsdogsError
from catsdogs.training import auto
from catsdogs.training.config import build_config
from catsdogs.training.frontier import EPOCH_HEADROOM, FRONTIER_FILE, Candidate, Frontier, Point, candidate_gflop, \
    choose_point, describe, frontier_record, load_frontier, predict
from catsdogs.training.hardware import select_precision
from catsdogs.training.models import build_model, count_flops
from catsdogs.training.speed import Probe
from catsdogs.training.train import train
from tests.helpers import invoke, quiet, split_fixture

ROOT = Path(__file__).resolve().parents[2]
AUTO = ROOT / "configs" / "recipes" / "auto.yaml"
data = split_fixture((12, 4, 4), size=48, scope="module")

# A small model that learns fast and levels off, and a big one that needs FLOPs but goes further.
SMALL = Candidate("small", "bncnn-s", 32, None, 0.75, train_gflop=0.01)
BIG = Candidate("big", "bncnn-s", 48, 32, 0.5, train_gflop=0.04, extra={"batch_size": 16, "lr_batch": 64})
CURVES = {"small": [(1.0, 0.80), (4.0, 0.82), (16.0, 0.83)], "big": [(1.0, 0.70), (4.0, 0.85), (16.0, 0.92)]}


def synthetic_frontier(train_images: int = 40) -> Frontier:
    points = tuple(Point(name, tflop, 1, tflop, (acc - 0.01, acc + 0.01)) for name, curve in CURVES.items()
                   for tflop, acc in curve)
    return Frontier({"small": SMALL, "big": BIG}, points, train_images, "python benchmarks/build_frontier.py", "test")


def speeds_for(minutes: float, tflop_small: float, tflop_big: float) -> dict[str, float]:
    """Seconds per image at which `minutes` buy each candidate these TFLOPs."""
    return {"small": minutes * 60 * SMALL.train_gflop / (tflop_small * 1000),
            "big": minutes * 60 * BIG.train_gflop / (tflop_big * 1000)}


def test_a_faster_machine_gets_the_bigger_point_and_a_slower_one_the_smaller() -> None:
    frontier = synthetic_frontier()
    slow = choose_point(frontier, speeds_for(20, 1.0, 1.0 / 3), 20, train_images=40)
    assert slow.candidate is SMALL and slow.predicted == pytest.approx(0.80)
    assert dict((n, p) for n, _, p, _ in slow.others)["big"] == -math.inf  # below its cheapest point: unknown
    fast = choose_point(frontier, speeds_for(20, 32.0, 8.0), 20, train_images=40)
    assert fast.candidate is BIG and fast.tflop == pytest.approx(8.0)
    assert fast.predicted == pytest.approx(0.885)  # halfway between 4 and 16 TFLOP in log FLOPs
    # The epoch cap: the images that 20 minutes buy at the measured speed, over the 40 photos, with headroom.
    images = 20 * 60 / speeds_for(20, 32.0, 8.0)["big"]
    assert fast.epochs == math.ceil(images / 40 * EPOCH_HEADROOM)
    lines = describe(fast, 20, "fp32")
    assert "chose big (bncnn-s, 32 then 48 px): 8 TFLOP" in lines[-1]
    # small's 32 TFLOP lie past its largest point (16): its 83% is a floor held from there, and the line says so.
    assert any(line.split()[:2] == ["small", "32"] and line.endswith("predicted 83.0% (measured only up to 16 TFLOP)")
               for line in lines), lines
    assert lines[-2].endswith("predicted 88.5%")  # big, inside its measured range



def test_a_choice_within_the_seeds_spread_says_which_candidates_it_is_level_with() -> None:
    # Every point's two seeds landed 2 points apart. small at its 16-TFLOP point (83%) and big at 3.5 TFLOP,
    # interpolated to 83.6%, are closer than that: level. At 64 TFLOP big is held at 92%, 9 points above small.
    frontier = synthetic_frontier()
    close = choose_point(frontier, speeds_for(20, 16.0, 3.5), 20, train_images=40)
    assert close.candidate is BIG and close.predicted == pytest.approx(0.70 + 0.15 * math.log(3.5) / math.log(4))
    assert [(n, round(p, 4), round(s, 4)) for n, p, s in close.level] == [("small", 0.83, 0.02)]
    lines = describe(close, 20, "fp32")
    assert lines[-2].startswith("auto: chose big ")
    assert lines[-1] == ("auto: small is level with big here: predicted 0.6 points lower, while the seeds of the "
                         "frontier's points they rest on landed up to 2.0 points apart; the frontier cannot tell "
                         "which trains better in this budget")
    assert frontier_record(close, 20, frontier)["level_with"] == [
        {"name": "small", "predicted_accuracy": pytest.approx(0.83), "seed_spread": 0.02}]
    clear = choose_point(frontier, speeds_for(20, 64.0, 64.0), 20, train_images=40)
    assert clear.candidate is BIG and clear.level == ()
    assert not any("level with" in line for line in describe(clear, 20, "fp32"))
    assert frontier_record(clear, 20, frontier)["level_with"] == []


@pytest.mark.parametrize("slow", [1.0, 1.38, 1.5])
def test_a_probe_slower_than_the_run_does_not_cap_it_before_its_budget(slow: float) -> None:
    # The run really trains at speeds_for(20, 32, 8): 20 minutes buy big these epochs of the 40 photos.
    real = speeds_for(20, 32.0, 8.0)["big"]
    epochs_the_budget_buys = 20 * 60 / real / 40
    # The probe said `slow` times the real seconds an image (a probe 38% slow was seen on the 2-core machine).
    choice = choose_point(synthetic_frontier(), {"big": real * slow}, 20, train_images=40)
    assert choice.epochs >= epochs_the_budget_buys


def test_predictions_interpolate_hold_beyond_and_refuse_below() -> None:
    points = synthetic_frontier().of("big")
    assert predict(points, 4.0) == (pytest.approx(0.85), "")
    assert predict(points, 2.0)[0] == pytest.approx(0.775)
    held, note = predict(points, 100.0)
    assert held == pytest.approx(0.92) and "beyond its largest measured point" in note
    assert predict(points, 0.5)[0] == -math.inf
    tiny = choose_point(synthetic_frontier(), speeds_for(1, 0.1, 0.1), 1, train_images=40)
    assert tiny.candidate is SMALL and "below its cheapest" in tiny.note  # the most epochs, when nothing is known


def test_the_shipped_frontier_is_measured_and_its_flops_are_the_models() -> None:
    frontier = load_frontier()
    budgets = {p.budget_tflop for p in frontier.points}
    assert len(budgets) >= 2 and all(len(p.accuracy) >= 2 for p in frontier.points)
    assert all(0.5 < a < 1.0 for p in frontier.points for a in p.accuracy)
    for c in frontier.candidates.values():
        sizes = [s for s in (c.image_size, c.progressive_size) if s]
        forward = {s: count_flops(build_model(c.model, 2, s), s) / 1e9 for s in sizes}
        assert c.train_gflop == pytest.approx(
            candidate_gflop(forward, c.image_size, c.progressive_size, c.progressive_fraction), rel=1e-3)
    for point in frontier.points:  # each point's FLOPs are its whole epochs on the frontier's photos
        c = frontier.candidates[point.candidate]
        assert point.tflop == pytest.approx(point.epochs * frontier.train_images * c.train_gflop / 1000, rel=1e-2)
    assert "build_frontier.py" in frontier.command


def test_a_broken_frontier_file_says_how_to_rebuild_it(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text('{"candidates": {}}', encoding="utf-8")
    with pytest.raises(CatsdogsError, match="not a compute frontier.*build_frontier.py"):
        load_frontier(tmp_path / "f.json")
    with pytest.raises(CatsdogsError, match="no compute frontier at"):
        load_frontier(tmp_path / "missing.json")


@pytest.mark.parametrize("tflops, chosen, model_size", [((32.0, 8.0), "big", 48), ((1.0, 1.0 / 3), "small", 32)])
def test_auto_trains_the_point_its_measured_speed_buys(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       tflops: tuple[float, float], chosen: str,
                                                       model_size: int) -> None:
    minutes = 0.01
    speeds = speeds_for(minutes, *tflops)
    measured: dict[str, Probe] = {}

    def measure(candidate: Candidate, device: object, precision: object, probe: Probe) -> float:
        measured[candidate.name] = probe
        return speeds[candidate.name]

    monkeypatch.setattr(auto, "load_frontier", lambda: synthetic_frontier())
    monkeypatch.setattr(auto, "measure_candidate", measure)
    lines: list[str] = []
    cfg = build_config(AUTO, {"data": str(data), "out": str(tmp_path / "run"), "time_budget": minutes,
                              "precision": "fp32", "device": "cpu"})
    result = train(cfg, progress=False, log=lines.append)
    run = Path(result.run_dir)
    record = json.loads((run / "auto.json").read_text(encoding="utf-8"))
    saved = (run / "config.yaml").read_text(encoding="utf-8")
    # Timed doing what the run does: auto.yaml's batch, augmentation and weight average, and the split's
    # 4 validation photos for its 12 training photos.
    expected = Probe(batch_size=64, augment="crop", ema=0.998, val_share=4 / 12, seconds=auto.PROBE_SECONDS,
                     repeats=auto.PROBE_REPEATS)
    assert measured == {"big": expected, "small": expected} and record["chosen"] == chosen
    assert record["probe"] == dataclasses.asdict(expected)
    assert f"image_size: {model_size}\n" in saved and "model: bncnn-s\n" in saved
    # A candidate's own settings (here big's batch size, with the lr scaled to it) come with it.
    assert ("batch_size: 16\nlr: 0.1\n" in saved and "lr_batch: 64\n" in saved) == (chosen == "big")
    assert any(line.startswith(f"auto: chose {chosen} ") for line in lines)
    assert (run / "history.csv").is_file() and (run / "best.pt").is_file()
    assert result.status in ("time-budget", "finished")


def test_auto_without_a_time_budget_says_to_give_one(data: Path, tmp_path: Path) -> None:
    done = invoke("train", "--config", AUTO, "--data", data, "--time-budget", "0", "--out", tmp_path / "run")
    assert done.exit_code == 2
    assert "give one with --time-budget MINUTES" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "run").exists()


def test_the_package_ships_its_frontier() -> None:
    assert FRONTIER_FILE.is_file()
    assert "catsdogs" in (ROOT / "pyproject.toml").read_text(encoding="utf-8").split("[tool.setuptools.package-data]")[1]


def test_each_candidate_is_timed_at_the_batch_size_it_trains_with(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: dict[str, tuple[int, str]] = {}

    def seconds(model, size, low, fraction, device, precision, probe):
        timed[f"{model}@{size}"] = (probe.batch_size, probe.augment)
        return 1e-3

    monkeypatch.setattr(auto, "schedule_seconds_per_image", seconds)
    auto.measure_candidate(SMALL, "cpu", "fp32", Probe(64, "crop"))
    auto.measure_candidate(BIG, "cpu", "fp32", Probe(64, "flip"))
    assert timed == {"bncnn-s@32": (64, "crop"), "bncnn-s@48": (16, "flip")}
    # ... and with the augmentation it trains with: TrivialAugment costs more a step than the run's crop.
    auto.measure_candidate(dataclasses.replace(SMALL, extra={"augment": "trivialaugment"}), "cpu", "fp32",
                           Probe(64, "crop"))
    assert timed["bncnn-s@32"] == (64, "trivialaugment")


def test_a_trick_that_keeps_its_base_s_steps_is_not_timed_twice() -> None:
    from catsdogs.training.distributed import SOLO

    whitened = dataclasses.replace(SMALL, name="small-wh", extra={"whiten_stem": True})
    frontier = synthetic_frontier()
    frontier = dataclasses.replace(frontier, candidates={**frontier.candidates, "small-wh": whitened},
                                   points=(*frontier.points, Point("small-wh", 1.0, 1, 1.0, (0.9, 0.9))))
    timed: list[str] = []

    def measure(candidate: Candidate, device: object, precision: object, probe: Probe) -> float:
        timed.append(candidate.name)
        return speeds_for(20, 1.0, 1.0 / 3)[candidate.name.removesuffix("-wh")]

    cfg = build_config(AUTO, {"data": "unused", "precision": "fp32"})
    cpu = torch.device("cpu")
    cfg, record = auto.choose_from_frontier(cfg, cpu, select_precision("fp32", cpu), 40, 4, SOLO, quiet,
                                            frontier=frontier, measure=measure)
    assert timed == ["small", "big"]
    assert record["chosen"] == "small-wh" and cfg.whiten_stem
    # A trick that changes the augmentation changes the steps: it is timed on its own.
    augmented = dataclasses.replace(SMALL, name="small-ta", extra={"augment": "trivialaugment"})
    frontier = dataclasses.replace(frontier, candidates={**frontier.candidates, "small-ta": augmented},
                                   points=(*frontier.points, Point("small-ta", 1.0, 1, 1.0, (0.5, 0.5))))
    timed.clear()
    auto.choose_from_frontier(cfg, cpu, select_precision("fp32", cpu), 40, 4, SOLO, quiet, frontier=frontier,
                              measure=lambda c, *_: timed.append(c.name) or 1e-3)
    assert timed == ["small", "big", "small-ta"]


def test_the_shipped_frontier_keeps_a_trick_only_where_it_beats_the_candidate_it_changes() -> None:
    frontier = load_frontier()
    tricks = [c for c in frontier.candidates.values() if c.extra]
    assert tricks, "the whitened stems were measured to help: they belong in the shipped frontier"
    for trick in tricks:
        base = next(c for c in frontier.candidates.values() if not c.extra and
                    (c.model, c.image_size, c.progressive_size) == (trick.model, trick.image_size,
                                                                    trick.progressive_size))
        pairs = [(p, q) for p in frontier.of(trick.name) for q in frontier.of(base.name)
                 if p.budget_tflop == q.budget_tflop]
        assert pairs and all(p.mean > q.mean for p, q in pairs), trick.name

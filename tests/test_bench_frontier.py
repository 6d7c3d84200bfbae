"""benchmarks/build_frontier.py: a frontier built on a tiny folder is one that auto can load and choose from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from catsdogs.training.frontier import choose_point, load_frontier
from tests.helpers import make_classes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "build_frontier.py"


def build(large: Path, work: Path, out: Path, *budgets: str, candidates: tuple[str, ...] = ("s64",)
          ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--large", str(large), "--work", str(work), "--out", str(out),
                           "--budgets", *budgets, "--candidates", *candidates, "--seeds", "1"],
                          capture_output=True, text=True, timeout=300)


def test_a_tiny_frontier_is_built_resumed_extended_and_loaded(tmp_path: Path, monkeypatch) -> None:
    large = make_classes(tmp_path / "large", {"Cat": 20, "Dog": 20})
    out = tmp_path / "frontier.json"
    first = build(large, tmp_path / "work", out, "0.002")
    assert first.returncode == 0, first.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    train_images = data["train_images"]
    assert train_images == 36  # 90% of 40 photos
    (point,) = data["points"]
    gflop = data["candidates"]["s64"]["train_gflop"]
    # The budget buys whole epochs: 0.002 TFLOP over 36 photos at s64's GFLOP an image.
    assert point["epochs"] == max(1, round(0.002 * 1000 / (gflop * train_images)))
    assert len(point["accuracy"]) == 1 and 0.0 <= point["accuracy"][0] <= 1.0
    runs = sorted(p.name for p in (tmp_path / "work" / "runs").iterdir())
    assert runs == ["s64-0.002-seed42"]
    # The accuracy is the last checkpoint's on the held-back val and test photos together (2 + 2 here).
    held_back = [json.loads(next((tmp_path / "work" / "runs" / runs[0] / f"eval-{part}").glob("metrics*.json"))
                            .read_text(encoding="utf-8")) for part in ("val", "test")]
    correct = sum(round(m["accuracy"] * m["images"]) for m in held_back)
    assert point["accuracy"][0] == round(correct / sum(m["images"] for m in held_back), 5)
    # Again with a candidate with a trick: the finished run is kept, not trained again, and both are in the file.
    first_run = tmp_path / "work" / "runs" / runs[0]
    kept = [first_run / "last.pt", *(next((first_run / f"eval-{part}").glob("metrics*.json")) for part in ("val", "test"))]
    stamps = [path.stat().st_mtime_ns for path in kept]
    second = build(large, tmp_path / "work", out, "0.002", candidates=("s64", "s64-wh"))
    assert second.returncode == 0, second.stderr
    assert [path.stat().st_mtime_ns for path in kept] == stamps  # neither trained nor measured again
    frontier = load_frontier(out)
    assert sorted(p.candidate for p in frontier.points) == ["s64", "s64-wh"]
    assert next(p for p in frontier.points if p.candidate == "s64").accuracy == tuple(point["accuracy"])
    assert "--budgets 0.002 --candidates s64 s64-wh --seeds 1" in frontier.command
    choice = choose_point(frontier, {"s64": 1e-3, "s64-wh": 1e-3}, 1.0, train_images)
    assert choice.candidate.name in ("s64", "s64-wh")
    # The trick's run trains with its settings, and the table sets it against the candidate it changes.
    assert "whiten_stem: true" in (tmp_path / "work" / "runs" / "s64-wh-0.002-seed42" / "config.yaml").read_text()
    whitened = frontier.candidates["s64-wh"]
    assert dict(whitened.extra) == {"whiten_stem": True} and whitened.train_gflop == gflop
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import build_frontier

    table = build_frontier.table(out).splitlines()
    assert table[0].startswith("| budget TFLOP | s64 (bncnn-s, 48/64 px)") and len(table) == 7
    assert "s64-wh" not in table[0]
    wh_acc = next(p for p in frontier.points if p.candidate == "s64-wh").mean
    assert table[6].startswith("| s64-wh | whiten_stem: True | 0.002 | ")
    assert table[6].endswith(f" | {(wh_acc - point['accuracy'][0]) * 100:+.1f} points |")


def test_speed_times_each_candidate_at_its_batch_alternating(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import build_frontier

    from catsdogs.training import auto

    timed: list[tuple[str, int]] = []

    def measure(candidate, device, precision, probe):
        # auto.yaml's settings, and the benchmark split's 5% of photos for validation against 90% for training
        assert (probe.augment, probe.ema, probe.val_share) == ("crop", 0.998, pytest.approx(0.05 / 0.90))
        timed.append((candidate.name, int(candidate.extra.get("batch_size", probe.batch_size))))
        return 0.001 * len(timed)

    monkeypatch.setattr(auto, "measure_candidate", measure)
    build_frontier.speed(["s64", "s64-b256"], threads=1, repeats=2)
    assert timed == [("s64", 64), ("s64-b256", 256)] * 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["s64", "batch", "64", "1.00", "3.00", "median", "3.00"]
    assert lines[2].split() == ["s64-b256", "batch", "256", "2.00", "4.00", "median", "4.00"]


def test_points_trained_in_bf16_say_so_in_the_runs_the_file_and_the_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import build_frontier

    gflop = {"s128": 0.4, "m128": 1.2}
    jobs = build_frontier.plan([400.0], ["s128"], 1, gflop, 8436, "bf16")
    assert [(j["name"], j["epochs"], j["precision"]) for j in jobs] == [("s128-400-bf16-seed42", 119, "bf16")]
    config = yaml.safe_load(build_frontier.candidate_config("s128", tmp_path, "bf16").read_text(encoding="utf-8"))
    assert config["precision"] == "bf16" and config["model"] == "bncnn-s"
    # fp32 configs keep their name, so a bf16 build beside an fp32 one writes its own
    assert build_frontier.candidate_config("s128", tmp_path).name == "s128.yaml"
    old = {"commands": ["earlier"], "points": [{"candidate": "s128", "budget_tflop": 130.0, "epochs": 39,
                                                "tflop": 130.2, "accuracy": [0.95, 0.96]}]}
    out = tmp_path / "frontier.json"
    every = {name: 1.0 for name in [*build_frontier.CANDIDATES, *build_frontier.TRICKS]} | gflop
    build_frontier.write(out, old, every, 8436,
                         {("s128", 400.0): [0.97]}, jobs, 1, "the command")
    points = json.loads(out.read_text(encoding="utf-8"))["points"]
    assert [(p["budget_tflop"], p.get("precision")) for p in points] == [(130.0, None), (400.0, "bf16")]
    table = build_frontier.table(out)
    assert "| 130 | 95.5% (95.0%, 96.0%; 39 ep) |" in table
    assert "| 400 | 97.0% (97.0%; 119 ep, bf16) |" in table
    frontier = load_frontier(out)
    assert [p.mean for p in frontier.of("s128")] == [0.955, 0.97]


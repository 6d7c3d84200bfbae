"""A run folder written by catsdogs 0.1.0 (tests/fixtures/run-0.1.0) still loads, evaluates and resumes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from catsdogs.cli import main
from catsdogs.inference.predict import load_trained
from tests.conftest import write_tiny_split

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-0.1.0"


@pytest.fixture
def old_run(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the 0.1.0 run folder and the tiny split it was trained on, regenerated: `(run, data)`."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run, ignore=shutil.ignore_patterns("README.md"))
    return run, write_tiny_split(tmp_path, per_class=(8, 4, 4), size=96)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), prog_name="catsdogs")
    assert result.exit_code == 0, result.output
    return result.output


def probabilities(path: Path) -> dict[str, float]:
    """predictions.csv's p_Cat by photo, named relative to its split folder (test/Cat/0.jpg)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return {"/".join(Path(row["path"]).parts[-3:]): float(row["p_Cat"]) for row in csv.DictReader(handle)}


def test_old_run_loads(old_run: tuple[Path, Path]) -> None:
    run, _ = old_run
    for which, epoch in (("best", 2), ("last", 2)):
        trained = load_trained(run, which, "cpu")
        assert (trained.cfg.model, trained.cfg.image_size, trained.epoch) == ("cnn3", 96, epoch)
        assert trained.classes == ["Cat", "Dog"]


def test_old_run_evaluates_to_its_recorded_predictions(old_run: tuple[Path, Path]) -> None:
    run, data = old_run
    invoke("evaluate", str(run), "--data", str(data), "--device", "cpu")
    metrics = json.loads((run / "eval-data" / "metrics.json").read_text(encoding="utf-8"))
    recorded = json.loads((FIXTURE / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] == recorded["accuracy"] and metrics["epoch"] == recorded["epoch"] == 2
    now, then = probabilities(run / "eval-data" / "predictions.csv"), probabilities(FIXTURE / "predictions.csv")
    assert now.keys() == then.keys() and all(abs(now[k] - then[k]) < 1e-5 for k in now)


def test_old_run_resumes_and_evaluates(old_run: tuple[Path, Path]) -> None:
    run, data = old_run
    invoke("train", "--resume", str(run), "--epochs", "3", "--data", str(data))
    with (run / "history.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[:2] == list(csv.DictReader((FIXTURE / "history.csv").read_text(encoding="utf-8").splitlines()))
    status = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert (status["status"], status["epochs_done"], status["epochs"]) == ("finished", 3, 3)
    assert status["init_hash"] == json.loads((FIXTURE / "status.json").read_text(encoding="utf-8"))["init_hash"]
    assert f"data: {data.resolve()}" in (run / "config.yaml").read_text(encoding="utf-8")
    invoke("evaluate", str(run), "--device", "cpu")  # its own split again: the moved folder, recorded by the resume
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epoch"] == 3 and metrics["data"] == str(data.resolve())

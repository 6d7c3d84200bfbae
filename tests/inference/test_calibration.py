"""Calibration: reliability bins and the expected calibration error, and evaluate's `ece`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from catsdogs.inference.calibration import expected_calibration_error, reliability
from catsdogs.inference.evaluate import evaluate_run


def test_ece_of_a_known_case() -> None:
    # Two predictions at confidence 0.85, both right (gap 0.15); two at 0.55, one right (gap 0.05).
    probs = np.array([[0.15, 0.85], [0.15, 0.85], [0.45, 0.55], [0.55, 0.45]])
    labels = np.array([1, 1, 1, 1])
    bins = reliability(probs, labels, bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert bins.accuracy[5] == 0.5 and bins.accuracy[8] == 1.0
    assert bins.confidence[5] == pytest.approx(0.55) and bins.confidence[8] == pytest.approx(0.85)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.5 * 0.15 + 0.5 * 0.05)


def test_confidence_that_matches_accuracy_has_no_error() -> None:
    # Ten predictions at 0.8, eight of them right; a certain one (1.0) falls in the last bin and is right.
    probs = np.array([[0.2, 0.8]] * 10 + [[0.0, 1.0]])
    labels = np.array([1] * 8 + [0] * 2 + [1])
    bins = reliability(probs, labels, bins=5)
    assert bins.counts.tolist() == [0, 0, 0, 10, 1]
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0


def test_evaluate_writes_the_ece_of_its_predictions(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    result = evaluate_run(run, device="cpu", progress=False)
    with open(result.predictions_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = np.array([[float(row["p_Cat"]), float(row["p_Dog"])] for row in rows])
    labels = np.array([["Cat", "Dog"].index(row["label"]) for row in rows])
    saved = json.loads(result.metrics_path.read_text())["ece"]
    assert saved == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5) and 0 < saved < 1

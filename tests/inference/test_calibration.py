"""Calibration: reliability bins and the expected calibration error, and evaluate's `ece`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from catsdogs.inference.calibration import BINS, expected_calibration_error, reliability
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.run_report import write_run_report


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


# The report's bins: 15 of width 1/15, right-closed, so bin b holds confidences in (b/15, (b+1)/15].
# Probabilities (Cat, Dog), the true class, and by hand: confidence, predicted class, right?, bin (ceil(15c) - 1).
REPORT_CASE = [((0.48, 0.52), 1),  # 0.52 Dog right   bin 7 (0.467, 0.533]
               ((0.50, 0.50), 1),  # 0.50 Cat wrong   bin 7: a tie names the first class
               ((0.40, 0.60), 1),  # 0.60 Dog right   bin 8 (0.533, 0.600]: 0.6 = 9/15 is its right edge
               ((0.62, 0.38), 0),  # 0.62 Cat right   bin 9 (0.600, 0.667]
               ((0.34, 0.66), 0),  # 0.66 Dog wrong   bin 9
               ((0.05, 0.95), 1),  # 0.95 Dog right   bin 14 (0.933, 1.000]
               ((1.00, 0.00), 0),  # 1.00 Cat right   bin 14: certainty falls in the last bin
               ((0.95, 0.05), 1)]  # 0.95 Cat wrong   bin 14
# bin 7: 2 photos, confidence (0.52 + 0.50) / 2 = 0.51, accuracy 1/2, gap 0.01
# bin 8: 1 photo, confidence 0.60, accuracy 1, gap 0.40
# bin 9: 2 photos, confidence (0.62 + 0.66) / 2 = 0.64, accuracy 1/2, gap 0.14
# bin 14: 3 photos, confidence (0.95 + 1 + 0.95) / 3 = 0.96667, accuracy 2/3, gap 0.30
# ECE = (2 * 0.01 + 1 * 0.40 + 2 * 0.14 + 3 * 0.30) / 8 = 1.60 / 8 = 0.2000
REPORT_BINS = {7: (2, 0.51, 0.5), 8: (1, 0.60, 1.0), 9: (2, 0.64, 0.5), 14: (3, 2.9 / 3, 2 / 3)}


def test_the_report_s_bins_match_a_case_worked_by_hand() -> None:
    probs, labels = np.array([p for p, _ in REPORT_CASE]), np.array([label for _, label in REPORT_CASE])
    bins = reliability(probs, labels)  # as run_report.py calls it: the default bins
    assert BINS == 15 and bins.edges == pytest.approx([k / 15 for k in range(16)], abs=1e-15)
    assert bins.counts.tolist() == [REPORT_BINS.get(b, (0,))[0] for b in range(15)]
    for b, (_, confidence, accuracy) in REPORT_BINS.items():
        assert (bins.confidence[b], bins.accuracy[b]) == pytest.approx((confidence, accuracy), abs=1e-12), b
    empty = [b for b in range(15) if b not in REPORT_BINS]
    assert np.isnan(bins.confidence[empty]).all() and np.isnan(bins.accuracy[empty]).all()
    assert bins.ece == pytest.approx(0.2, abs=1e-12)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2, abs=1e-12)


def test_the_run_report_shows_the_hand_worked_ece(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim: adam\n")
    with (run / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "predicted", "p_Cat", "p_Dog"])
        for k, ((cat, dog), label) in enumerate(REPORT_CASE):
            writer.writerow([f"test/{k}.jpg", ["Cat", "Dog"][label], ["Cat", "Dog"][int(dog > cat)], cat, dog])
    text = write_run_report(run).path.read_text(encoding="utf-8")
    assert "Expected calibration error (ECE): <b>0.2000</b>" in text  # no metrics.json: from the bins


def ece_by_loops(probs: list[list[float]], labels: list[int], bins: int = 15) -> float:
    """The ECE written out plainly, to check the vectorised one: per bin |sum of confidences - photos right|."""
    groups: dict[int, list[tuple[float, bool]]] = {}
    for p, label in zip(probs, labels):
        confidence = max(p)
        place = next(b for b in range(bins) if confidence <= (b + 1) / bins)
        groups.setdefault(place, []).append((confidence, p.index(confidence) == label))
    return sum(abs(sum(c for c, _ in group) - sum(right for _, right in group)) for group in groups.values()) \
        / len(probs)


def test_the_loop_ece_agrees_with_the_hand_worked_case() -> None:
    assert ece_by_loops([list(p) for p, _ in REPORT_CASE], [label for _, label in REPORT_CASE]) == \
        pytest.approx(0.2, abs=1e-12)


def test_evaluate_writes_the_ece_of_its_predictions(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    result = evaluate_run(run, device="cpu", progress=False)
    with open(result.predictions_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = [[float(row["p_Cat"]), float(row["p_Dog"])] for row in rows]
    labels = [["Cat", "Dog"].index(row["label"]) for row in rows]
    saved = json.loads(result.metrics_path.read_text())["ece"]
    # predictions.csv rounds to 6 decimals; the ECE is recomputed here by plain loops, not the function evaluate used
    assert saved == pytest.approx(ece_by_loops(probs, labels), abs=1e-5) and 0 < saved < 1

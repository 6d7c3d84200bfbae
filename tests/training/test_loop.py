"""Tests for catsdogs.training.loop: the balanced accuracy that picks the best epoch under class weights."""

from __future__ import annotations

import numpy as np

from catsdogs.inference.metrics import compute_metrics
from catsdogs.training.loop import balanced_accuracy


def test_balanced_accuracy_is_the_mean_recall_over_the_classes_present() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(np.zeros(5, dtype=int), labels, 2) == 0.5  # always the majority: 1 / classes
    assert balanced_accuracy(np.array([0, 0, 1, 1, 1]), labels, 2) == 0.75  # recalls 2/4 and 1/1
    assert balanced_accuracy(np.array([0, 1, 0]), np.array([0, 0, 0]), 3) == 2 / 3  # absent classes do not count
    assert balanced_accuracy(np.array([], dtype=int), np.array([], dtype=int), 2) == 0.0


def test_validation_and_evaluate_report_the_same_balanced_accuracy() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    metrics = compute_metrics(probs, labels, ["Cat", "Dog", "Fox"])
    assert balanced_accuracy(probs.argmax(1), labels, 3) == metrics["balanced_accuracy"]

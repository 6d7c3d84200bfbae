"""Calibration: does a prediction made with 90% confidence come true 90% of the time?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 15  # equal-width confidence bins, the usual choice since Guo et al. (2017)


@dataclass
class Reliability:
    """Per confidence bin: its edges, photos, mean confidence and accuracy (nan where empty)."""

    edges: np.ndarray  # BINS + 1 edges from 0 to 1; bin b holds confidences in (edges[b], edges[b + 1]]
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the photo-weighted mean gap between confidence and accuracy."""
        total = self.counts.sum()
        if not total:
            return 0.0
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] / total * gaps).sum())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin each prediction by its confidence (the probability of the class it predicts)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(1) == labels).astype(np.float64) if len(probs) else np.zeros(0)
    # Right-closed bins, so that a confidence of exactly 1 falls in the last one.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, mean_confidence, accuracy)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE over `bins` equal-width confidence bins: 0 when confidence matches accuracy in each bin."""
    return reliability(probs, labels, bins).ece

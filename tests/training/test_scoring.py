"""Tests for catsdogs.training.scoring: TTA views, probabilities over them, the accuracies, on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from catsdogs.training.hardware import FP32
from catsdogs.training.scoring import (accuracy, balanced_accuracy, mean_over_views, score_batch, tta_mode,
                                       tta_views)


def test_balanced_accuracy_is_the_mean_recall_over_the_classes_present() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(np.zeros(5, dtype=int), labels, 2) == 0.5  # always the majority: 1 / classes
    assert balanced_accuracy(np.array([0, 0, 1, 1, 1]), labels, 2) == 0.75  # recalls 2/4 and 1/1
    assert balanced_accuracy(np.array([0, 1, 0]), np.array([0, 0, 0]), 3) == 2 / 3  # absent classes do not count
    assert balanced_accuracy(np.array([], dtype=int), np.array([], dtype=int), 2) == 0.0


def test_balanced_accuracy_of_three_classes_by_hand() -> None:
    # Class 0: 1 of 2 found, class 1: 2 of 3, class 2: 0 of 1. Mean recall (1/2 + 2/3 + 0) / 3 = 7/18,
    # while the plain accuracy is 3 of 6.
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    assert balanced_accuracy(predicted, labels, 3) == pytest.approx(7 / 18, abs=1e-15)
    assert accuracy(predicted, labels) == 0.5
    assert balanced_accuracy(labels, labels, 3) == 1.0 == accuracy(labels, labels)


def test_accuracy_without_predictions_is_zero() -> None:
    assert accuracy(np.array([], dtype=int), np.array([], dtype=int)) == 0.0


def test_tta_views() -> None:
    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    flip = tta_views(images, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], images.flip(3))
    views = tta_views(images, "flip-shift")
    assert len(views) == 6 and all(v.shape == images.shape for v in views)
    d = 2  # 64 / 32
    assert torch.equal(views[2][..., d:, d:], images[..., :-d, :-d])  # moved down-right by d
    assert torch.equal(views[3][..., :-d, :-d], images[..., d:, d:])  # moved up-left by d
    with pytest.raises(ValueError, match="one of flip, flip-shift"):
        tta_views(images, "crops")


def test_tta_mode_reads_the_flag_and_the_mode() -> None:
    assert tta_mode(True) == "flip" and tta_mode("flip-shift") == "flip-shift"
    assert tta_mode(False) is None and tta_mode(None) is None


def test_mean_over_views_by_hand() -> None:
    # One image of one row [1, 2, 3]; the "probabilities" are its first two pixels: [1, 2] as it is,
    # [3, 2] mirrored, so the flip mean is [2, 2].
    images = torch.tensor([[[[1.0, 2.0, 3.0]]]])

    def first_two(view: torch.Tensor) -> torch.Tensor:
        return view[:, 0, 0, :2]

    assert mean_over_views(first_two, images, None).tolist() == [[1.0, 2.0]]
    assert mean_over_views(first_two, images, "flip").tolist() == [[2.0, 2.0]]
    # Probabilities the caller has already are used for the image itself, not recomputed.
    assert mean_over_views(first_two, images, "flip", first=torch.tensor([[5.0, 0.0]])).tolist() == [[4.0, 1.0]]


def test_score_batch_averages_the_softmax_of_the_views() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    images = torch.randn(3, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    device = torch.device("cpu")
    logits, plain = score_batch(model, images, FP32, device)
    with torch.no_grad():
        assert torch.equal(logits, model(images)) and torch.equal(plain, torch.softmax(logits, 1))
        mirrored = torch.softmax(model(images.flip(3)), 1)
    same_logits, flip = score_batch(model, images, FP32, device, "flip")
    assert torch.equal(same_logits, logits)  # the loss without TTA is the plain images' cross-entropy
    assert torch.equal(flip, (plain + mirrored) / 2)
    _, six = score_batch(model, images, FP32, device, "flip-shift")
    assert six.shape == (3, 2) and torch.allclose(six.sum(1), torch.ones(3))

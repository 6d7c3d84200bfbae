"""How a model scores photos: test-time augmentation views, probabilities, a source's loss, the accuracies."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from catsdogs.data.cache import BatchSource
from catsdogs.errors import CatsdogsError
from catsdogs.progress import progress_bar
from catsdogs.training.hardware import Precision

# Evaluation batch: on a 2-core CPU, 128 images of 224 px keep the activations in cache better
# than 256 (about 1,300 against 800 images/s for cnn3, measured with bench_train.py's loop).
EVAL_BATCH = 128
TTA_MODES = ("flip", "flip-shift")


def tta_mode(tta: bool | str | None) -> str | None:
    """The test-time augmentation `tta` names: True is "flip", False or None none."""
    return "flip" if tta is True else tta or None


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views a test-time augmentation averages over, for an NCHW batch (normalised, or uint8 for flip).

    flip: the image and its mirror image. flip-shift: those two, and each moved by 1/32 of the side
    diagonally both ways (edges repeated), as airbench's translated views: six in all.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    views = [images, images.flip(3)]
    if mode == "flip-shift":
        d = max(images.shape[-1] // 32, 1)
        padded = [nn.functional.pad(v, (d, d, d, d), mode="replicate") for v in views]
        h, w = images.shape[-2:]
        views += [p[..., y:y + h, x:x + w] for p in padded for y, x in ((0, 0), (2 * d, 2 * d))]
    return views


def mean_over_views(probabilities: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    tta: str | None, first: torch.Tensor | None = None) -> torch.Tensor:
    """`probabilities` of an NCHW batch; under `tta`, their mean over the batch's views (see tta_views).

    `first`: the probabilities of `images` themselves, when the caller has them already.
    """
    probs = probabilities(images) if first is None else first
    if not tta:
        return probs
    views = tta_views(images, tta)[1:]
    return (probs + sum(probabilities(view) for view in views)) / (len(views) + 1)


@torch.no_grad()
def score_batch(model: nn.Module, images: torch.Tensor, precision: Precision, device: torch.device,
                tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a normalised NCHW batch and its softmax probabilities (under `tta`, the mean over
    the views), on `device`, at `precision`."""

    def probabilities(view: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(view.contiguous(memory_format=torch.channels_last)).float(), 1)

    with precision.autocast(device):
        logits = model(images).float()
        if tta:
            return logits, mean_over_views(probabilities, images, tta, first=torch.softmax(logits, 1))
    return logits, torch.softmax(logits, 1)


@torch.no_grad()
def evaluate_source(model: nn.Module, source: BatchSource, precision: Precision, device: torch.device,
                    batch_size: int = EVAL_BATCH, show: bool = False, tta: bool | str | None = False
                    ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean loss, accuracy, softmax probabilities and labels of `source`, in file order.

    With `tta` (True or "flip"), each image's probabilities are the mean over the image and its
    mirror image; with "flip-shift", over six views (see tta_views).
    """
    mode = tta_mode(tta)
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, probs, labels_all = 0.0, [], []
    order = source.order(batch_size, None)
    for images, labels in progress_bar(source.batches(order), total=len(order), desc="evaluating", unit="batch",
                                       show=show, leave=False):
        images = source.preset(images.to(device, non_blocking=True))
        labels = labels.to(device)
        logits, batch_probs = score_batch(model, images, precision, device, mode)
        if mode:
            loss_sum += float(nn.functional.nll_loss(torch.log(batch_probs.clamp_min(1e-12)), labels, reduction="sum"))
        else:
            loss_sum += float(loss_fn(logits, labels))
        probs.append(batch_probs.cpu())
        labels_all.append(labels.cpu())
    model.train(was_training)
    if not probs:
        raise CatsdogsError(f"no readable images in {source.split.root}")
    p, y = torch.cat(probs).numpy(), torch.cat(labels_all).numpy()
    return loss_sum / len(y), accuracy(p.argmax(1), y), p, y


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Correct predictions over all predictions: a fraction between 0 and 1 (0 without predictions)."""
    return float((np.asarray(predicted) == np.asarray(labels)).mean()) if len(labels) else 0.0


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The mean recall over the classes that have photos: always answering one class scores 1 / classes.

    Training's validation picks the best epoch by it under class weights; evaluate reports it.
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    recalls = [float((predicted[labels == c] == c).mean()) for c in range(num_classes) if (labels == c).any()]
    return float(np.mean(recalls)) if recalls else 0.0

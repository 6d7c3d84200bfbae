"""Tricks of the fast small-image recipes (airbench, Myrtle's "How to train your ResNet"), as config keys.

- `bn_momentum`: the batch-norm layers' running-statistics momentum.
- `bn_bias_lr_scale`: the batch-norm biases' learning rate as a multiple of lr (optim.parameter_groups).
- `whiten_stem`: a new run's first convolution starts from the whitening of training patches.
- `lr_batch`: the batch size lr is given for; another batch size scales it linearly.

Each is off by default; docs/recipes.md says which ones the compute frontier showed to help.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from catsdogs.data.cache import BatchSource
from catsdogs.data.transforms import eval_preset
from catsdogs.errors import UsageError

# Training photos whose patches the whitening is computed from, spread evenly over the split.
WHITEN_PHOTOS = 256
WHITEN_EPS = 1e-2  # added to each variance: directions with almost none are not blown up into noise


def effective_lr(lr: float, batch_size: int, lr_batch: int | None) -> float:
    """The lr a run uses: `lr` as given, or scaled by batch_size / lr_batch (the linear scaling rule)."""
    return lr * batch_size / lr_batch if lr_batch else lr


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Give every batch-norm layer of `model` this running-statistics momentum (None: leave them); how many."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if momentum is not None:
        for layer in layers:
            layer.momentum = momentum
    return len(layers) if momentum is not None else 0


def bn_bias_ids(model: nn.Module) -> set[int]:
    """The ids of the batch-norm layers' bias parameters."""
    return {id(m.bias) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first convolution, the one that sees the photo's pixels."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise UsageError("whiten_stem needs a model whose first layer is a convolution over the 3 colour channels")
    return conv


def whitening_filters(patches: torch.Tensor, filters: int) -> torch.Tensor:
    """`filters` filters from patches (N x C x k x k); see filters_from_covariance."""
    flat = patches.reshape(len(patches), -1).double()
    return filters_from_covariance(flat.T @ flat, flat.sum(0), len(flat), filters).reshape(filters, *patches.shape[1:])


def filters_from_covariance(products: torch.Tensor, sums: torch.Tensor, count: int, filters: int) -> torch.Tensor:
    """`filters` flat filters from the patches' sums of products and sums (float64) over `count` patches: their
    main directions, each scaled to unit variance and followed by its negative (so that a ReLU after them
    keeps both signs)."""
    mean = sums / count
    covariance = (products - count * torch.outer(mean, mean)) / (count - 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(values, descending=True)
    pairs = math.ceil(filters / 2)
    if pairs > len(values):
        raise UsageError(f"whiten_stem: the first convolution has {filters} filters, more than twice its "
                         f"{len(values)} patch values")
    chosen = vectors[:, order[:pairs]] / torch.sqrt(values[order[:pairs]] + WHITEN_EPS)
    return torch.stack([chosen.T, -chosen.T], 1).reshape(2 * pairs, -1)[:filters].float()


def patch_moments(source: BatchSource, image_size: int, kernel: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          int]:
    """The sums of products and the sums (float64) of every kernel-sized patch, at stride 1, of WHITEN_PHOTOS
    training photos spread evenly over the split, normalised as the model sees them; and how many patches.
    No augmentation and no random number; a few photos at a time, so memory stays small at any size."""
    picks = source.valid[np.linspace(0, len(source.valid) - 1, min(WHITEN_PHOTOS, len(source.valid))).astype(int)]
    preset = eval_preset(image_size)
    products = sums = None
    count = 0
    for images, _ in source.batches([picks[i:i + 2] for i in range(0, len(picks), 2)]):
        patches = nn.functional.unfold(preset(images).float(), kernel)  # N x (C k k) x L
        flat = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
        products = flat.T @ flat if products is None else products + flat.T @ flat
        sums = flat.sum(0) if sums is None else sums + flat.sum(0)
        count += len(flat)
    return products, sums, count


@torch.no_grad()
def whiten_stem(model: nn.Module, source: BatchSource, image_size: int) -> None:
    """Set the first convolution's weights to the whitening of the training photos' patches (its bias, if
    any, to 0). The same photos give the same weights in every process of a run."""
    conv = first_conv(model)
    filters = filters_from_covariance(*patch_moments(source, image_size, conv.kernel_size), conv.out_channels)
    conv.weight.copy_(filters.reshape(conv.weight.shape).to(conv.weight.device))
    if conv.bias is not None:
        conv.bias.zero_()

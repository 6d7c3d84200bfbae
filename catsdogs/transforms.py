"""Train and eval presets: resize once per image, then flip and normalise whole uint8 batches."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from catsdogs.images import load_resized

# ImageNet statistics: a common, harmless choice that also suits pretrained torchvision weights.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """How images reach the model.

    `load` turns a file into a size x size x 3 uint8 tensor (decode, EXIF orientation, RGB,
    resize): the expensive part, done once per image when the split is cached. Calling the
    preset on a uint8 NHWC batch applies the random flips (training only), converts to float
    and normalises, returning an NCHW float batch in channels-last memory.
    """

    image_size: int
    hflip: float = 0.0
    vflip: float = 0.0
    train: bool = False

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        return torch.from_numpy(load_resized(path, self.image_size))

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a uint8 NHWC batch with 3 channels, got {batch.dtype} {tuple(batch.shape)}")
        images = batch.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: channels-last for free
        if self.train:
            images = _random_flip(images, self.hflip, dim=3, generator=generator)
            images = _random_flip(images, self.vflip, dim=2, generator=generator)
        mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255.0
        out = (images.float() - mean) / std
        return out.contiguous(memory_format=torch.channels_last)


def _random_flip(images: torch.Tensor, p: float, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image along `dim` with probability p, drawing one number per image."""
    if p <= 0:
        return images
    # Draw on the CPU generator so the same seed gives the same flips on every device.
    chosen = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    if not bool(chosen.any()):
        return images
    return torch.where(chosen.view(-1, 1, 1, 1), images.flip(dim), images)


def train_preset(image_size: int, hflip: float = 0.25, vflip: float = 0.0) -> Preset:
    """Resize, random horizontal (and optionally vertical) flips, to tensor, normalise."""
    return Preset(image_size=image_size, hflip=hflip, vflip=vflip, train=True)


def eval_preset(image_size: int) -> Preset:
    """Resize, to tensor, normalise: no randomness."""
    return Preset(image_size=image_size, train=False)

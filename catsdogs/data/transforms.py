"""Train and eval presets: resize once per image, then augment and normalise whole uint8 batches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from catsdogs.registry import Registry

# ImageNet statistics: a common, harmless choice that also suits pretrained torchvision weights.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# normalised = (pixel - MEAN_255) * SCALE_255 for 0..255 pixels, per channel.
MEAN_255 = torch.tensor(MEAN) * 255.0
SCALE_255 = 1.0 / (torch.tensor(STD) * 255.0)

# An augmentation takes an NCHW batch (uint8 or float in 0..255) and the generator, and returns one.
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
AUGMENTS: Registry[Augment] = Registry("augmentation")


def register_augment(name: str) -> Callable[[Augment], Augment]:
    return AUGMENTS.register(name)


def list_augments() -> list[str]:
    return AUGMENTS.names()


@dataclass(frozen=True)
class Preset:
    """How decoded images reach the model.

    The photos arrive as size x size x 3 uint8 arrays (`catsdogs.images.load_resized`: decode,
    EXIF orientation, RGB, resize; the expensive part, done once per image when the split is
    cached). Calling the preset on a uint8 NHWC batch applies the augmentation and random flips
    (training only), converts to float and normalises, returning an NCHW float batch in
    channels-last memory.
    """

    image_size: int
    hflip: float = 0.0
    vflip: float = 0.0
    train: bool = False
    augment: str = "flip"

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None, size: int | None = None,
                 hflips: torch.Tensor | None = None) -> torch.Tensor:
        """`size`: train on a smaller square than the cached one (progressive resizing), scaled down
        with antialiasing before the augmentation. `hflips`: which images to mirror (a bool per
        image, e.g. alternating flips), in place of random ones."""
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a uint8 NHWC batch with 3 channels, got {batch.dtype} {tuple(batch.shape)}")
        images = batch.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: channels-last for free
        if not self.train:
            return normalise(images)
        if size is not None and size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                     antialias=True, align_corners=False).clamp_(0, 255)
        out = normalise(AUGMENTS.get(self.augment)(images, generator))
        # Flips commute with the per-channel normalisation, so they run in place on our own copy.
        if hflips is None:
            random_flip_(out, self.hflip, dim=3, generator=generator)
        else:
            chosen = hflips.nonzero().squeeze(1).to(out.device)
            out[chosen] = out[chosen].flip(3)
        random_flip_(out, self.vflip, dim=2, generator=generator)
        return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """0..255 NCHW (uint8, or a float batch the augmentation made) to ImageNet-normalised float.

    In place on one float copy, seen as rows of W x 3 values with the channel statistics tiled
    along the row: broadcasting a 3-vector over the innermost dimension (or a 1x3x1x1 tensor
    over a strided view) runs about five times slower on a CPU. The result is channels-last.
    """
    out = images if images.dtype == torch.float32 else images.to(torch.float32)
    out = out.contiguous(memory_format=torch.channels_last)
    width = out.shape[3]
    mean = MEAN_255.to(out.device).repeat(width)
    scale = SCALE_255.to(out.device).repeat(width)
    out.permute(0, 2, 3, 1).reshape(-1, width * 3).sub_(mean).mul_(scale)  # a view: NHWC is contiguous
    return out


def denormalise(batch: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalise`: an NCHW batch the model gets back as 0..255 uint8 NHWC pixels, to draw."""
    mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.float() * std + mean).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_flip_(images: torch.Tensor, p: float, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image along `dim` with probability p, in place, drawing one number per image."""
    if p <= 0:
        return images
    # Draw on the CPU generator so the same seed gives the same flips on every device.
    chosen = (torch.rand(images.shape[0], generator=generator) < p).nonzero().squeeze(1).to(images.device)
    if len(chosen):
        images[chosen] = images[chosen].flip(dim)
    return images


@register_augment("flip")
def flip_only(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random flips only (the tutorial's augmentation); the flips themselves follow hflip/vflip."""
    return images


@register_augment("crop")
def random_crop(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pad by 1/8 of the side with reflection and cut a random crop of the original size."""
    n, _, height, width = images.shape
    pad = max(height // 8, 1)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    # Reflection by gathering rows and columns of the NHWC storage (uint8 until the copy into the
    # float output), then one copy per image: padding a channels-last float batch with F.pad and
    # stacking slices took about an eighth of cnn3's training step at 224 px, and was not channels-last
    # (benchmarks/profile_step.py). The same pixels as F.pad(mode="reflect") and a cut.
    rows = _reflect(torch.arange(-pad, height + pad, device=images.device), height)
    cols = _reflect(torch.arange(-pad, width + pad, device=images.device), width)
    padded = images.permute(0, 2, 3, 1).index_select(1, rows).index_select(2, cols)
    out = torch.empty((n, height, width, images.shape[1]), dtype=torch.float32, device=images.device)
    for i, (y, x) in enumerate(offsets):
        out[i] = padded[i, y:y + height, x:x + width]
    return out.permute(0, 3, 1, 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside 0..size-1 mirrored back inside, without repeating the edge (torch's "reflect")."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _resized_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                        generator: torch.Generator | None) -> torch.Tensor:
    area = _uniform(n, *scale, generator) * height * width
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator)
    ratio = torch.exp(log_ratio)
    crop_w = torch.sqrt(area * ratio).clamp(max=width)
    crop_h = torch.sqrt(area / ratio).clamp(max=height)
    x0 = torch.rand(n, generator=generator) * (width - crop_w)
    y0 = torch.rand(n, generator=generator) * (height - crop_h)
    return torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + crop_w, y0 + crop_h], dim=1)


@register_augment("rrc")
def random_resized_crop(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A random crop of 25-100% of the area, aspect 3:4 to 4:3, resized back (one roi_align call)."""
    from torchvision.ops import roi_align

    n, _, height, width = images.shape
    boxes = _resized_crop_boxes(n, height, width, (0.25, 1.0), generator).to(images.device)
    return roi_align(images.float(), boxes, output_size=(height, width), sampling_ratio=2, aligned=True)


@register_augment("rrc-jitter")
def random_resized_crop_jitter(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random-resized crop, then brightness, contrast and saturation each scaled by 0.7-1.3."""
    images = random_resized_crop(images, generator)
    n = images.shape[0]
    factors = [_uniform(n, 0.7, 1.3, generator).to(images.device).view(-1, 1, 1, 1) for _ in range(3)]
    brightness, contrast, saturation = factors
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    gray = (images * torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    images = (images - gray) * saturation + gray
    return images.clamp(0, 255)


def _per_image(transform: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
    """torchvision's automatic policies draw one op per call: call them once per image.

    They draw from torch's global generator, which also drives dropout and which they take no
    generator to replace: so they run on a copy of it seeded from `generator`, and the global one
    is left as it was. Their ops are then a function of `generator` alone, as every other
    augmentation's, and a resumed run repeats them.
    """
    images = images.to(torch.uint8) if images.dtype != torch.uint8 else images
    if generator is None:
        return torch.stack([transform(image) for image in images])
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in images])


@register_augment("trivialaugment")
def trivial_augment(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop, then TrivialAugmentWide (torchvision v2): one random op of random strength."""
    from torchvision.transforms import v2

    return _per_image(v2.TrivialAugmentWide(), random_crop(images, generator).round().to(torch.uint8), generator)


@register_augment("randaugment")
def rand_augment(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop, then RandAugment (torchvision v2): two random ops at magnitude 9."""
    from torchvision.transforms import v2

    return _per_image(v2.RandAugment(), random_crop(images, generator).round().to(torch.uint8), generator)


def train_preset(image_size: int, hflip: float = 0.25, vflip: float = 0.0, augment: str = "flip") -> Preset:
    """Resize, augmentation, random horizontal (and optionally vertical) flips, to tensor, normalise."""
    AUGMENTS.get(augment)
    return Preset(image_size=image_size, hflip=hflip, vflip=vflip, train=True, augment=augment)


def eval_preset(image_size: int) -> Preset:
    """Resize, to tensor, normalise: no randomness."""
    return Preset(image_size=image_size, train=False)

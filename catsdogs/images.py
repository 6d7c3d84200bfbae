"""Reading one photo: decode, honour EXIF orientation, make it 3-channel RGB, resize fast."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps

# Photos above this many pixels are refused as decompression bombs (a few KB of PNG can claim
# gigapixels). 250 MP passes phone photos (50-200 MP today) and still bounds memory: about
# 750 MB decoded as RGB, in each process that decodes. Pillow itself only warns above it and raises at
# twice it; load_rgb makes the warning an error, so split, train and evaluate share one bound.
MAX_IMAGE_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# OpenCV's own thread pool would fight the DataLoader workers and torch for the same cores.
cv2.setNumThreads(1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return `image` as 3-channel RGB whatever its mode (L, P, RGBA, CMYK, I;16, ...)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Composite on white: transparent areas are usually background, and black would be a cue.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Decode the file fully, apply its EXIF orientation and return it as RGB.

    `draft_size` lets the JPEG decoder shrink by a power of two while staying at least that
    large on both sides, which is much faster for big photos and loses nothing after a resize.
    An image of more than MAX_IMAGE_PIXELS raises Image.DecompressionBombWarning (or, above
    twice that, Image.DecompressionBombError) before anything is decoded.
    """
    with warnings.catch_warnings():
        # Palette images with transparency and odd EXIF blocks warn; the conversion handles them.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)


def resize_array(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 array to size x size (area when shrinking, bilinear when growing)."""
    height, width = array.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(array)
    shrinking = height >= size and width >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interpolation)


def load_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """Load a photo as a size x size x 3 uint8 RGB array, the way training and evaluation see it."""
    image = load_rgb(path, draft_size=size)
    return resize_array(np.asarray(image), size)


def is_image_name(path: str | Path) -> bool:
    """True for file names that look like photos (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})

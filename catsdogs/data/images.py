"""Reading one photo: decode, honour EXIF orientation, make it 3-channel RGB, resize fast."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

# Photos above this many pixels are refused as decompression bombs (a few KB of PNG can claim
# gigapixels). 250 MP passes phone photos (50-200 MP today) and still bounds memory: about
# 750 MB decoded as RGB, in each process that decodes. load_rgb checks it on every photo, so
# split, train and evaluate share one bound. Pillow's own, process-wide limit is left as the
# program has it (refusing above 179 MP by default); the catsdogs commands raise it to this
# bound (catsdogs.process.configure_process).
MAX_IMAGE_PIXELS = 250_000_000
# A photo under this many pixels on a side holds no cat or dog to learn (icons, tracking pixels, a
# thumbnail's remains): split leaves it out, and train, evaluate and predict refuse it alike, as
# Ultralytics' image check does (under 10 pixels).
MIN_SIDE = 10


class TooSmall(ValueError):
    """A photo under MIN_SIDE pixels on a side."""



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
    An image of more than MAX_IMAGE_PIXELS raises Image.DecompressionBombError before anything
    is decoded, as does one above twice the process's PIL.Image.MAX_IMAGE_PIXELS (Pillow's own
    check, a program's stricter limit). One under MIN_SIDE pixels on a side raises TooSmall.
    """
    with warnings.catch_warnings():
        # Palette images with transparency and odd EXIF blocks warn, and so does Pillow above its
        # own limit: the conversion handles the first, the check below decides the second.
        warnings.simplefilter("ignore")
        with Image.open(path) as image:
            _refuse_bomb(image.size)
            if min(image.size) < MIN_SIDE:
                raise TooSmall(f"{image.width}x{image.height} pixels, under {MIN_SIDE} on a side")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)


def _refuse_bomb(size: tuple[int, int]) -> None:
    """Raise Image.DecompressionBombError, worded as Pillow words it, for more than MAX_IMAGE_PIXELS."""
    pixels = size[0] * size[1]
    if pixels > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {MAX_IMAGE_PIXELS} "
                                           "pixels, could be decompression bomb DOS attack.")


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

# Never photos: names that begin with "." (.DS_Store, the ._ copies macOS writes beside each
# file, .ipynb_checkpoints/, .git/) and the metadata folder of macOS zips. split, evaluate and
# predict all leave them out, and say so.
METADATA_FOLDERS = frozenset({"__MACOSX"})
HIDDEN_FILE = "hidden file"
HIDDEN_FOLDER = "hidden or metadata folder, not searched"
NOT_PHOTO_NAME = f"not named as a photo ({', '.join(sorted(IMAGE_EXTENSIONS))})"
BROKEN_LINK = "a broken or looping link"
NOT_IN_CLASS_FOLDER = "not in a class folder"


def is_hidden(name: str) -> bool:
    """Whether a file or folder of this name is one that no search for photos looks into."""
    return name.startswith(".") or name in METADATA_FOLDERS


@dataclass
class PhotoSearch:
    """The photo files under a folder, in sorted order, and every other thing met, with why."""

    photos: list[Path]
    left_out: list[tuple[Path, str]]


def find_photos(folder: Path) -> PhotoSearch:
    """Every photo-named file under `folder`, following links to folders (each real folder once, so
    a loop ends). Hidden files and folders, other files, broken links and folders that cannot be
    read are listed in `left_out` with the reason."""
    search = PhotoSearch([], [])
    seen: set[str] = set()

    def report(error: OSError) -> None:
        search.left_out.append((Path(error.filename), error.strerror or str(error)))

    for here, dirs, files in os.walk(folder, followlinks=True, onerror=report):
        real = os.path.realpath(here)
        if real in seen:  # a link back into a folder already searched
            dirs.clear()
            continue
        seen.add(real)
        search.left_out += [(Path(here) / name, HIDDEN_FOLDER) for name in sorted(dirs) if is_hidden(name)]
        dirs[:] = sorted(name for name in dirs if not is_hidden(name))
        for name in sorted(files):
            file = Path(here) / name
            if is_hidden(name):
                search.left_out.append((file, HIDDEN_FILE))
            elif not is_image_name(name):
                search.left_out.append((file, NOT_PHOTO_NAME))
            elif file.is_file():
                search.photos.append(file)
            else:
                search.left_out.append((file, BROKEN_LINK if file.is_symlink() else "not a regular file"))
    return search


def describe_left_out(left_out: Sequence[tuple[Path, str]], examples: int = 3) -> list[str]:
    """One line per reason: `PATH: reason` for a few, `N files: reason (e.g. A, B, C)` for more."""
    by_reason: dict[str, list[Path]] = {}
    for path, reason in left_out:
        by_reason.setdefault(reason, []).append(path)
    lines = []
    for reason, paths in by_reason.items():
        if len(paths) <= examples:
            lines += [f"{path}: {reason}" for path in paths]
        else:
            shown = ", ".join(str(path) for path in paths[:examples])
            lines.append(f"{len(paths)} files: {reason} (e.g. {shown})")
    return lines


def no_photos_message(folder: Path, left_out: Sequence[tuple[Path, str]]) -> str:
    """`FOLDER holds no photo files`, and what it holds instead."""
    besides = "; ".join(describe_left_out(left_out, examples=2))
    return f"{folder} holds no photo files (.jpg, .png, ...)" + (f"; it holds {besides}" if besides else "")

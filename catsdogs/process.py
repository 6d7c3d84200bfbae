"""What catsdogs changes in the process that runs one of its commands, set up in one place.

Importing catsdogs changes nothing process-wide: a notebook or a web service that imports it
keeps its own Pillow limit, OpenCV threads and memory allocator. A program of catsdogs' own
(the `catsdogs` commands, `python -m catsdogs`, the benchmark scripts) calls
`configure_process()` once, first. Library functions leave the process alone, except that
`catsdogs.train.train` tunes the allocator (`tune_allocator`) when a run starts, as a training
run owns its process.
"""

from __future__ import annotations

import ctypes
import os
import sys

import cv2
from PIL import Image

from catsdogs.images import MAX_IMAGE_PIXELS

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def configure_process() -> None:
    """Set up this process for catsdogs' commands:

    - Pillow's decompression-bomb limit, `PIL.Image.MAX_IMAGE_PIXELS`, becomes catsdogs' own
      bound (250 MP, `catsdogs.images.MAX_IMAGE_PIXELS`, which every decode checks anyway), so
      that Pillow's default (refusing above 179 MP) does not refuse the 180-250 MP photos that
      split keeps;
    - OpenCV's thread pool is cut to one thread (`cv2.setNumThreads(1)`): its resizes would
      otherwise fight the decoding workers and torch for the same cores;
    - glibc's malloc keeps large freed blocks for reuse (`tune_allocator`).

    Processes forked from this one (split's and the cache's decoding workers) inherit all three.
    """
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    cv2.setNumThreads(1)
    tune_allocator()


def tune_allocator() -> bool:
    """Keep glibc from unmapping and re-zeroing large activation buffers on every step.

    With default settings each tensor above the mmap threshold is mapped and unmapped per
    step, and the kernel zero-fills fresh pages: on a small CPU that costs as much time as the
    arithmetic. Raising the thresholds lets freed blocks be reused. Linux/glibc only; set
    CATSDOGS_MALLOC=default to leave the allocator alone. Returns whether it changed anything.
    """
    if os.environ.get("CATSDOGS_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl or another libc: nothing to tune
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    ok &= mallopt(_M_TOP_PAD, 512 * 2**20) == 1
    return bool(ok)

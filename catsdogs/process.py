"""What catsdogs changes in the process that runs one of its commands, set up in one place.

Importing catsdogs changes nothing process-wide: a notebook or a web service that imports it
keeps its own Pillow limit, OpenCV threads and memory allocator. A program of catsdogs' own
(the `catsdogs` commands, `python -m catsdogs`, the benchmark scripts) calls
`configure_process()` once, first. Library functions leave the process alone, except that
`catsdogs.training.train.train` tunes the allocator (`tune_allocator`) when a run starts, as a training
run owns its process.
"""

from __future__ import annotations

import atexit
import gc

import cv2
from PIL import Image

from catsdogs.data.images import MAX_IMAGE_PIXELS
from catsdogs.cpus import tune_allocator


def configure_process() -> None:
    """Set up this process for catsdogs' commands:

    - Pillow's decompression-bomb limit, `PIL.Image.MAX_IMAGE_PIXELS`, becomes catsdogs' own
      bound (250 MP, `catsdogs.data.images.MAX_IMAGE_PIXELS`, which every decode checks anyway), so
      that Pillow's default (refusing above 179 MP) does not refuse the 180-250 MP photos that
      split keeps;
    - OpenCV's thread pool is cut to one thread (`cv2.setNumThreads(1)`): its resizes would
      otherwise fight the decoding workers and torch for the same cores;
    - glibc's malloc keeps large freed blocks for reuse (`tune_allocator`);
    - at exit, after the exit handlers registered later, the garbage collector's objects are frozen
      (`gc.freeze()`), so that Python's teardown does not search the hundreds of thousands of objects of
      torch's modules for cycles: that took about 0.7 s at the end of every command. Python never promised
      to finalise objects still alive at exit; catsdogs closes its files before then.

    Processes forked from this one (split's and the cache's decoding workers) inherit the first three.
    """
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    cv2.setNumThreads(1)
    tune_allocator()
    atexit.register(gc.freeze)

"""This process's CPUs and memory: how many CPUs it may use, and glibc's allocator tuned for training.

The CPU count sizes every pool of decoding processes and threads. Torch-free, so that the commands which never
train (split, and --help but for evaluate's and export's) start in a tenth of a second.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: `taskset`, a container's or a batch job's CPU set),
    not all the machine has, which os.cpu_count() gives and which would oversubscribe the allowed ones."""
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows lack it
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep glibc from unmapping and re-zeroing large activation buffers on every step.

    With default settings each tensor above the mmap threshold is mapped and unmapped per
    step, and the kernel zero-fills fresh pages: on a small CPU that costs as much time as the
    arithmetic. Raising the thresholds lets freed blocks be reused. Linux/glibc only; set
    CATSDOGS_MALLOC=default to leave the allocator alone. Returns whether it changed anything.
    """
    import ctypes
    import sys

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

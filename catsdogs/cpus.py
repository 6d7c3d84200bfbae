"""How many CPUs this process may run on: the size of every pool of decoding processes and threads."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: `taskset`, a container's or a batch job's CPU set),
    not all the machine has, which os.cpu_count() gives and which would oversubscribe the allowed ones."""
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows lack it
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1

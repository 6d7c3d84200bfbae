"""Where a run runs: the threads it computes with, and the node and device its status.json records."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Iterator

import torch

# An executor that knows a node's name better than the host name does (Ray: the node's address, as two
# nodes on one machine share a host name) sets it here for the runs it starts.
NODE_ENV = "CATSDOGS_NODE"


def use_threads(threads: int) -> None:
    """Compute with `threads` CPU threads in this process (PyTorch's and OpenMP's pools), and in processes it starts."""
    if threads < 1:
        raise ValueError(f"a run needs at least 1 thread, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def placement(device: torch.device) -> dict[str, Any]:
    """What status.json says about where the run ran: its threads, its node and its device."""
    shown = str(device)
    if device.type == "cuda":
        shown += f" ({torch.cuda.get_device_name(device)})"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:  # the GPU's number on the node, where an executor pinned the run to one
            shown += f", CUDA_VISIBLE_DEVICES={visible}"
    return {"threads": torch.get_num_threads(), "node": os.environ.get(NODE_ENV) or socket.gethostname(),
            "device": shown}


@contextlib.contextmanager
def threads_for_runs(threads: int | None) -> Iterator[None]:
    """Compute with `threads` threads while the block runs (None: leave them be); then as before."""
    if threads is None:
        yield
        return
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    use_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env

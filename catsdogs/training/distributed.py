"""Training on several processes started by torchrun: which one this is, and what they agree on.

One process per GPU (or several CPU processes, for testing): each trains on its share of
every batch, DistributedDataParallel averages the gradients, and process 0 alone validates,
writes files and prints. Every decision that ends an epoch or the run is taken together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from catsdogs.errors import UsageError, first_line


@dataclass(frozen=True)
class Team:
    """This process's place among the processes of one training run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SOLO = Team()


def team_from_environment() -> Team:
    """The team torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; one process without them."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (start several processes with "
                         "torchrun)") from None
    if world <= 1:
        return SOLO
    return Team(rank, world, local_rank)


def start(team: Team, device_name: str) -> torch.device:
    """Join the process group and return this process's device: its own GPU, or the CPU."""
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    if device_name == "mps":
        raise UsageError("torchrun training runs on CUDA GPUs or on the CPU, not on mps")
    if use_cuda:
        if team.local_rank >= torch.cuda.device_count():
            raise UsageError(f"process {team.rank} wants GPU {team.local_rank}, but this machine has "
                             f"{torch.cuda.device_count()}: lower --nproc_per_node")
        device = torch.device("cuda", team.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30),
                                **({"device_id": device} if use_cuda else {}))
    return device


def finish(team: Team) -> None:
    if team.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard_batches(order: Sequence[np.ndarray], team: Team) -> list[np.ndarray]:
    """This process's part of each batch: contiguous, near-equal slices that together cover it.

    A batch smaller than the team (a last, short one) is left out by every process alike, so
    that all of them take the same number of steps.
    """
    if not team.enabled:
        return list(order)
    return [np.array_split(batch, team.world)[team.rank] for batch in order if len(batch) >= team.world]


def _device_for_collectives(team: Team) -> torch.device:
    return torch.device("cuda", team.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(values: Sequence[float], team: Team, op: dist.ReduceOp) -> list[float]:
    if not team.enabled:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_device_for_collectives(team))
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def agree_max(values: Sequence[float], team: Team) -> list[float]:
    """The element-wise maximum over the team: a stop any process asks for is everyone's stop."""
    return _all_reduce(values, team, dist.ReduceOp.MAX)


def total(values: Sequence[float], team: Team) -> list[float]:
    """The element-wise sum over the team (training loss sums, correct and seen counts)."""
    return _all_reduce(values, team, dist.ReduceOp.SUM)


def from_main(value: Any, team: Team) -> Any:
    """Process 0's `value` (any picklable object), in every process."""
    if not team.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, team: Team) -> list[Any]:
    """Every process's `value`, in rank order, in every process."""
    if not team.enabled:
        return [value]
    out: list[Any] = [None] * team.world
    dist.all_gather_object(out, value)
    return out


def wait_for_all(team: Team) -> None:
    if team.enabled:
        dist.barrier()


def lost_a_peer(exc: BaseException) -> bool:
    """Under torchrun: a collective failed because another process died (gloo, NCCL)."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return False
    text = f"{type(exc).__name__} {exc}"
    return any(mark in text for mark in ("DistBackendError", "DistNetworkError", "gloo", "NCCL",
                                         "Connection reset by peer", "Connection closed by peer"))


def lost_peer_message(exc: BaseException) -> str | None:
    """One line for the user when another process of the torchrun run stopped; None for other errors."""
    if not lost_a_peer(exc):
        return None
    return ("another process of this torchrun run stopped (killed, or failed: see its message above, if any, "
            f"and torchrun's report): {first_line(exc, 120)}")

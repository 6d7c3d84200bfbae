"""What training changes as it goes (weights, optimizer, EMA, random streams, progress), saved and restored as one."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from catsdogs.training.distributed import SOLO, Team, gather
from catsdogs.training.ema import ModelEMA

# Seeds of process r's augmentation and dropout streams are offset by r times this.
RANK_SEED_STRIDE = 1_000_003


@dataclass
class Progress:
    """Where training stands: saved in last.pt so a resume continues exactly from here."""

    epoch: int = 0  # epochs fully done
    step: int = 0  # batches done inside the current epoch
    epoch_order_state: torch.Tensor | None = None  # order generator state at the epoch's start
    sums: tuple[float, int, int, float] = (0.0, 0, 0, 0.0)  # loss sum, correct, seen, seconds
    epochs_since_best: int = 0
    stopped_early: bool = False
    budget_spent: bool = False
    global_step: int = 0  # optimizer steps taken in the whole run
    low_res_steps: int = 0  # of those, steps at the progressive (smaller) size
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def rng_state() -> dict[str, Any]:
    """Global random states as plain values, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    # Dropout on a GPU draws from the GPU's own generator, which torch.get_rng_state() leaves out.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    elif torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() saved; an accelerator's state only where that accelerator is used now."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore_progress(state: Mapping[str, Any]) -> Progress:
    saved = dict(state["progress"])
    saved["sums"] = tuple(saved["sums"])
    saved.pop("best_val_acc", None)  # kept by older catsdogs; the best epoch is read off the history now
    return Progress(**saved)


def restore_process_randomness(state: Mapping[str, Any], team: Team, aug_gen: torch.Generator,
                               log: Callable[[str], None]) -> None:
    """Give this process back its own generator states; exact only with as many processes as before."""
    ranks = state.get("ranks") or [{"aug_gen": state["aug_gen"], "rng": state["rng"]}]
    if len(ranks) == team.world:
        aug_gen.set_state(ranks[team.rank]["aug_gen"])
        set_rng_state(ranks[team.rank]["rng"])
        return
    log(f"note: this run was saved by {len(ranks)} process(es) and continues on {team.world}: it goes on from "
        "the same weights and step, but its augmentations differ from an uninterrupted run's")
    set_rng_state(ranks[0]["rng"])
    step = int(state["progress"]["global_step"])
    aug_gen.manual_seed(int(state["config"]["seed"]) + 1 + RANK_SEED_STRIDE * team.rank + step)
    if team.enabled:
        torch.manual_seed(int(state["config"]["seed"]) + RANK_SEED_STRIDE * team.rank + step)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's weights, detached and on the CPU, as checkpoints hold them."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


@dataclass
class TrainState:
    """Everything a training step changes: what last.pt saves so that a resume continues exactly.

    order_gen draws the batch order (the same in every process); aug_gen this process's augmentations.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    order_gen: torch.Generator
    aug_gen: torch.Generator
    ema: ModelEMA | None = None
    progress: Progress = dataclasses.field(default_factory=Progress)

    @property
    def kept_model(self) -> nn.Module:
        """The model to validate and save: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self, team: Team = SOLO) -> dict[str, Any] | None:
        """last.pt's training part: weights ("model" the kept ones; with EMA "raw_model" the trained ones),
        optimizer, scaler, generators, global random states and progress. Every process of `team` takes
        part (each keeps its own random streams, under "ranks"); process 0 alone gets the dict, the rest None."""
        ranks = gather({"aug_gen": self.aug_gen.get_state(), "rng": rng_state()}, team)
        if not team.main:
            return None
        state: dict[str, Any] = {"model": weights(self.kept_model)}
        if self.ema is not None:  # "model" holds the averaged weights to use; a resume continues from raw_model
            state["raw_model"] = weights(self.model)
            state["ema"] = self.ema.state_dict()
        state.update({
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "order_gen": self.order_gen.get_state(), "aug_gen": ranks[0]["aug_gen"], "rng": ranks[0]["rng"],
            "progress": dataclasses.asdict(self.progress),
        })
        if team.enabled:
            state["ranks"] = ranks
        return state

    def load_state_dict(self, state: Mapping[str, Any], team: Team = SOLO,
                        log: Callable[[str], None] = print) -> None:
        """Continue from `state` (a last.pt, today's or an older catsdogs's) as process `team.rank`."""
        self.model.load_state_dict(state.get("raw_model", state["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"], state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress = restore_progress(state)
        self.order_gen.set_state(state["order_gen"])
        restore_process_randomness(state, team, self.aug_gen, log)
        if not team.main:  # process 0 carries the interrupted epoch's sums for the whole team
            self.progress.sums = (0.0, 0, 0, self.progress.sums[3])

"""Checkpoints as plain dicts: written atomically, read only with `weights_only=True`."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from catsdogs.atomic import atomic_write
from catsdogs.errors import CatsdogsError

FORMAT = "catsdogs-checkpoint"
VERSION = 1
# The keys that say what a checkpoint's weights are (all of best.pt; last.pt adds the training state).
MODEL, CONFIG, CLASSES, EPOCH, VAL_ACC = "model", "config", "classes", "epoch", "val_acc"
INIT_HASH, DATA_FINGERPRINT = "init_hash", "data_fingerprint"
PROGRESS = "progress"  # last.pt's Progress (training.loop) as a dict


@dataclass(frozen=True)
class SavedModel:
    """A checkpoint's weights and what they mean: the config and classes they were trained with, and when."""

    weights: dict[str, torch.Tensor]
    config: dict[str, Any]
    classes: list[str]
    epoch: int | None = None
    val_acc: float | None = None  # of that epoch
    init_hash: str | None = None  # of the weights before training
    data_fingerprint: dict[str, str | None] | None = None  # of the train and val file lists

    def to_state(self) -> dict[str, Any]:
        return {MODEL: self.weights, CONFIG: self.config, EPOCH: self.epoch, VAL_ACC: self.val_acc,
                CLASSES: self.classes, INIT_HASH: self.init_hash, DATA_FINGERPRINT: self.data_fingerprint}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SavedModel:
        return cls(state[MODEL], state[CONFIG], list(state[CLASSES]), state.get(EPOCH), state.get(VAL_ACC),
                   state.get(INIT_HASH), state.get(DATA_FINGERPRINT))


def global_step(state: Mapping[str, Any]) -> int:
    """The optimizer steps a last.pt had taken."""
    return int(state[PROGRESS]["global_step"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Save a plain dict (tensors and plain Python values) atomically; full disk raises CatsdogsError."""
    try:
        with atomic_write(path) as handle:
            torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
    except OSError as exc:
        raise CatsdogsError(f"could not write checkpoint {path}: {exc.strerror or exc}; "
                            "the previous checkpoint is untouched") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a catsdogs checkpoint safely; anything else gives one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CatsdogsError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CatsdogsError(f"{path} is not a readable checkpoint (truncated or not written by torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses any pickle that would build arbitrary objects or run code.
        raise CatsdogsError(f"{path} is not a safe catsdogs checkpoint (it holds objects other than "
                            "tensors and plain values); refusing to load it") from None
    except Exception:  # torch raises many kinds on foreign bytes (KeyError, IndexError, RuntimeError, ...)
        raise CatsdogsError(f"{path} is not a readable checkpoint (truncated or not written by torch.save)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CatsdogsError(f"{path} is not a catsdogs checkpoint")
    if state.get("version", 0) > VERSION:
        raise CatsdogsError(f"{path} was written by a newer catsdogs (format {state['version']}); upgrade catsdogs")
    return state

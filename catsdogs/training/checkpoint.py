"""Checkpoints as plain dicts: written atomically, read only with `weights_only=True`."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from catsdogs.atomic import atomic_write
from catsdogs.errors import CatsdogsError

FORMAT = "catsdogs-checkpoint"
VERSION = 1


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

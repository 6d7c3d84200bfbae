"""Checkpoints as plain dicts: written atomically, read only with `weights_only=True`."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from catsdogs.errors import CatsdogsError
from catsdogs.names import utf8

FORMAT = "catsdogs-checkpoint"
VERSION = 1


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file in the same folder, fsync it, then `os.replace` it over `path`.

    A crash or kill at any instant leaves either the old file or the new one, never a partial
    one; the temporary file is removed when writing fails.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only folder, say: name the file the user knows, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            # mkstemp makes the file private (0600); give it the mode a plain open() would.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename == tmp:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` atomically as UTF-8, whatever the locale; a file name in it that is not UTF-8 is
    written escaped (see catsdogs.names), so the file is valid UTF-8."""
    with atomic_write(path) as handle:
        handle.write(utf8(text))


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

"""Atomic file writes: a file is either the old one or the new one, never half written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from catsdogs.names import utf8


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
    """Replace the text file at `path` with `text` in one step (see `atomic_write`), as UTF-8 whatever
    the locale; a file name in it that is not UTF-8 is written escaped (see catsdogs.names)."""
    with atomic_write(path) as handle:
        handle.write(utf8(text))

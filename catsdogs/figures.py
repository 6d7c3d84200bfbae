"""Matplotlib for every figure: headless, and saved without the font's warnings on the terminal."""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import IO, Any

from catsdogs.atomic import atomic_write

_told: set[str] = set()  # notes already printed by this process


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, target: str | os.PathLike | IO[bytes], **kwargs: Any) -> None:
    """Lay out, save and close `fig`; a file is replaced whole or not at all (catsdogs.atomic), in
    the format its suffix names, as matplotlib would choose. Class names in characters the font
    lacks (犬) are drawn as boxes; matplotlib warns once per character, with a traceback-like
    source line, so that becomes one note of ours instead."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.tight_layout()
            if isinstance(target, (str, os.PathLike)):
                _save_atomically(fig, Path(target), **kwargs)
            else:
                fig.savefig(target, **kwargs)
    finally:
        pyplot().close(fig)
    glyphs = [re.match(r"Glyph (\d+) .*missing from font", str(w.message)) for w in caught]
    missing = sorted({chr(int(match.group(1))) for match in glyphs if match})
    for warning, match in zip(caught, glyphs):
        if not match:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing and "glyphs" not in _told:
        _told.add("glyphs")
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        print(f"note: the figures' font has no {shown}: those characters show as boxes", file=sys.stderr)


def _save_atomically(fig: Any, path: Path, **kwargs: Any) -> None:
    """`fig.savefig(path)` through a temporary file: named so, matplotlib would take the format from
    the temporary name, so it is given the one `path` names (or the default, appended as it would)."""
    if kwargs.get("format") is None:
        kwargs["format"] = path.suffix[1:].lower() or pyplot().rcParams["savefig.format"]
        if not path.suffix:
            path = path.with_name(f"{path.name}.{kwargs['format']}")
    with atomic_write(path) as handle:
        fig.savefig(handle, **kwargs)

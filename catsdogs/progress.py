"""Progress bars: tqdm's on a terminal, none in a log file or a pipe."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **options: Any) -> tqdm:
    """A tqdm bar when `show` and standard error is a terminal; otherwise a silent pass-through, so a
    redirected log gets the commands' own lines and not hundreds of carriage-return updates."""
    return tqdm(iterable, disable=None if show else True, **options)

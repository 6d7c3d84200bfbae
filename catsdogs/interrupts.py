"""Ctrl-C in one place: what a block of work does when SIGINT (or SIGTERM) arrives while it runs."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator, Literal


class CtrlC:
    """The signal handler of one block: it notes the first interrupt, then raises or waits as told.

    `first`: "raise" ends the block with KeyboardInterrupt at once; "note" only sets `requested`
    (and calls `notice`), for the block to act on at a safe point.
    `again`: what any later interrupt does: "ignore" it, or "raise" KeyboardInterrupt (abort).
    Under torchrun each process gets Ctrl-C twice, from the terminal and from torchrun passing
    it on (late, on a busy machine), so a repeat within `repeat_window` seconds of the first
    counts as the same interrupt, even where `again` is "raise".
    """

    def __init__(self, first: Literal["raise", "note"] = "raise", again: Literal["raise", "ignore"] = "ignore",
                 repeat_window: float = 0.0, notice: Callable[[], None] | None = None) -> None:
        self.first, self.again, self.repeat_window, self.notice = first, again, repeat_window, notice
        self.requested = False
        self.signum: int | None = None  # the first interrupt's signal
        self.first_at = 0.0

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if self.again == "ignore" or time.monotonic() - self.first_at < self.repeat_window:
                return
            raise KeyboardInterrupt
        self.requested, self.signum, self.first_at = True, signum, time.monotonic()
        if self.first == "raise":
            raise KeyboardInterrupt
        if self.notice is not None:
            self.notice()


@contextmanager
def on_ctrl_c(handler: CtrlC, signals: tuple[int, ...] = (signal.SIGINT,), replay: bool = False
              ) -> Iterator[CtrlC]:
    """Let `handler` take `signals` while the block runs; the handlers before are put back after it.

    With `replay`, an interrupt the handler only noted is passed on, once the block has ended, to
    the handler that was there before (Python's default raises KeyboardInterrupt). Only the main
    thread gets signals, so elsewhere this installs nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = {sig: signal.signal(sig, handler.handle) for sig in signals}
    try:
        yield handler
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
    if replay and handler.requested and callable(previous[handler.signum]):
        previous[handler.signum](handler.signum, None)


def ctrl_c_deferred() -> AbstractContextManager[CtrlC]:
    """Hold off Ctrl-C while the block runs (cleanup that must finish); one that came is raised after it.

    A second Ctrl-C landing inside a cleanup would otherwise cut it short, leaving staging
    folders or worker processes behind.
    """
    return on_ctrl_c(CtrlC(first="note", again="ignore"), replay=True)


def first_ctrl_c_only() -> AbstractContextManager[CtrlC]:
    """The first Ctrl-C raises KeyboardInterrupt; any more are ignored until the block has ended.

    A second Ctrl-C in the instant between the first one and the start of the cleanup would
    skip the cleanup, and a process pool's exit handler then waits for the workers to finish
    every photo.
    """
    return on_ctrl_c(CtrlC(first="raise", again="ignore"))


def ignore_ctrl_c(*_: object) -> None:
    """Ignore Ctrl-C from now on: in helper processes, which the main process stops cleanly, and
    in a main process that has begun to exit, so a late Ctrl-C cannot cut the exit short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

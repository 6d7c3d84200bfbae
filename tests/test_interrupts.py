"""Tests for catsdogs.interrupts: real SIGINTs sent to this process while a block runs."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from catsdogs.interrupts import CtrlC, ctrl_c_deferred, first_ctrl_c_only, ignore_ctrl_c, on_ctrl_c


def ctrl_c() -> None:
    """A real Ctrl-C to this process; Python runs the handler before the next line."""
    os.kill(os.getpid(), signal.SIGINT)


def test_a_deferred_ctrl_c_lets_the_block_finish_then_raises() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_deferred():
            ctrl_c()
            ctrl_c()  # a second one is not a second KeyboardInterrupt
            done.append("cleanup")
    assert done == ["cleanup"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_ctrl_c_goes_to_the_handler_that_was_there_before() -> None:
    with on_ctrl_c(CtrlC(first="note", again="ignore")) as outer:
        with ctrl_c_deferred():
            ctrl_c()
            assert not outer.requested  # held back until the deferral ends
        assert outer.requested


def test_no_ctrl_c_no_interrupt() -> None:
    with ctrl_c_deferred() as handler:
        pass
    assert not handler.requested


def test_only_the_first_ctrl_c_raises() -> None:
    steps = []
    with first_ctrl_c_only():
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
        ctrl_c()  # during the cleanup: ignored
        steps.append("cleaned up")
    assert steps == ["cleaned up"]
    with pytest.raises(KeyboardInterrupt):  # the handler before is back
        ctrl_c()


def test_a_stop_request_notes_the_first_and_aborts_on_the_second() -> None:
    told = []
    with on_ctrl_c(CtrlC(first="note", again="raise", notice=lambda: told.append("stopping")),
                   signals=(signal.SIGINT, signal.SIGTERM)) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM and told == ["stopping"]
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen = []

    def work() -> None:
        with ctrl_c_deferred() as handler:
            seen.append(signal.getsignal(signal.SIGINT))
        seen.append(handler.requested)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler, False]


def test_ignore_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: calls.append((sig, handler)))
    ignore_ctrl_c(7)  # as a DataLoader's worker_init_fn, given the worker's number
    assert calls == [(signal.SIGINT, signal.SIG_IGN)]

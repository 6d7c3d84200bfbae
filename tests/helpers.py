"""Plain functions that several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

from click.testing import CliRunner, Result

from catsdogs.cli import main
from catsdogs.training import loop as loop_module


def invoke(*args: str | Path) -> Result:
    """Run `catsdogs ARGS...` in-process (paths given as they are) and return click's result."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="catsdogs")


def history_without_time(run: Path) -> list[list[str]]:
    """A run's history.csv, header included, without the `seconds` column (the one that varies run to run)."""
    with (run / "history.csv").open() as handle:
        rows = list(csv.reader(handle))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


def interrupt_after(monkeypatch, steps: int) -> None:
    """Deliver a real SIGINT to this process after `steps` training steps."""
    original = loop_module.EpochLoop._step
    calls = {"n": 0}

    def step(self, images, labels):
        result = original(self, images, labels)
        calls["n"] += 1
        if calls["n"] == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(loop_module.EpochLoop, "_step", step)

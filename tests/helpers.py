"""Plain functions that several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
from pathlib import Path

from click.testing import CliRunner, Result

from catsdogs.cli import main
from catsdogs.data import transforms


def invoke(*args: str | Path) -> Result:
    """Run `catsdogs ARGS...` in-process (paths given as they are) and return click's result."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="catsdogs")


def history_without_time(run: Path) -> list[list[str]]:
    """A run's history.csv, header included, without the `seconds` column (the one that varies run to run)."""
    with (run / "history.csv").open() as handle:
        rows = list(csv.reader(handle))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


def on_training_batch(monkeypatch, act) -> list[tuple[list[str], str]]:
    """Record each training step's batch as the model gets it, calling `act(number)` (1-based) first.

    Per step: the photos (hashes of their decoded pixels) and a hash of the augmented batch. The hook is
    the training preset (catsdogs.data.transforms.Preset), which every training step calls once.
    """
    steps: list[tuple[list[str], str]] = []
    original = transforms.Preset.__call__

    def call(self, batch, *args, **kwargs):
        if self.train:
            act(len(steps) + 1)
        out = original(self, batch, *args, **kwargs)
        if self.train:
            steps.append(([hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in batch],
                          hashlib.sha1(out.numpy().tobytes()).hexdigest()))
        return out

    monkeypatch.setattr(transforms.Preset, "__call__", call)
    return steps


def interrupt_after(monkeypatch, steps: int) -> list[tuple[list[str], str]]:
    """Deliver a real SIGINT to this process during training step `steps`: as a Ctrl-C, it stops the run
    once that step is done. Returns the record of the steps (see on_training_batch)."""
    def ctrl_c(number: int) -> None:
        if number == steps:
            os.kill(os.getpid(), signal.SIGINT)

    return on_training_batch(monkeypatch, ctrl_c)

"""compare --jobs: a real `catsdogs compare` process, interrupted as its runs start or while they train, stops every
run cleanly, and the same command then resumes the study to the results of a study never interrupted; --tune-lr
through --jobs gives the tuned study run one after another."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from catsdogs.study import compare as compare_module, lr_sweep, tuning
from catsdogs.study.compare import run_study
from catsdogs.training.checkpoint import load_checkpoint
from tests.helpers import STUDY_SIZE as SIZE, children, history_without_time, paused_at_epoch_2, quiet, run_results, \
    split_fixture, summary_without_time, tiny_spec, waiting

data = split_fixture((4, 2, 2), size=SIZE, scope="module")  # 8 training photos
# vanilla-sgd trains on one photo a step (8 steps an epoch), so a Ctrl-C lands inside an epoch; adam's batch of 100
# takes all 8 photos in one step, so its epochs have no step after which to stop inside them.
OPTIMS = ("vanilla-sgd", "adam")
# The runs wait at the start of epoch 2 until the Ctrl-C reaches them (tests/pausing): without that, adam once
# finished all its epochs before vanilla-sgd wrote its first, in a CI run on a slow machine.
EPOCHS = 4
INTERRUPTED = "study interrupted; run the same command again to continue"


def _spec(data: Path, out: Path):
    spec = tiny_spec(data, out, threads_per_run=1)
    return dataclasses.replace(spec, optims=OPTIMS, base=dataclasses.replace(spec.base, epochs=EPOCHS))


def _compare(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "catsdogs", "compare", "--data", str(data), "--image-size", str(SIZE),
            "--epochs", str(EPOCHS), "--device", "cpu", "--precision", "fp32", "--optims", ",".join(OPTIMS),
            "--seeds", "1", "--jobs", "2", "--threads-per-run", "1", "--out", str(out)]


def _descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [grandchild for child in found for grandchild in _descendants(child)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_all(process: subprocess.Popen) -> str:
    """After a failure: end the command and its workers (which run in sessions of their own) at once; its stderr."""
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.communicate()[1]


def _wait_for(done, process: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if process.poll() is not None or time.monotonic() > deadline:
            ended = process.poll() is not None
            stderr = _kill_all(process)
            why = f"the command ended (exit {process.returncode})" if ended else f"{timeout:g} s passed"
            pytest.fail(f"{why} before {what}; its stderr ends: {stderr[-2000:]}")
        time.sleep(0.05)


def _ctrl_c(command: list[str], cwd: Path, ready: Callable[[subprocess.Popen], bool], what: str,
            pause: Path) -> None:
    """Run `command` until `ready`, then press Ctrl-C: it must stop at once, cleanly, every worker with it.
    Its runs wait at the start of their second epoch until the Ctrl-C reaches them (see paused_at_epoch_2)."""
    # Its own process group, as a terminal's foreground job: Ctrl-C sends SIGINT to the whole group.
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=paused_at_epoch_2(pause))
    try:
        _wait_for(lambda: ready(process), process, what)
        workers = _descendants(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            _kill_all(process)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert sum(line.startswith(INTERRUPTED) for line in stdout.splitlines()) == 1, stdout
    assert len(workers) >= 2 and not [pid for pid in workers if _alive(pid)]


def test_ctrl_c_as_the_runs_start_or_train_stops_them_all_and_the_same_command_resumes(data: Path,
                                                                                      tmp_path: Path) -> None:
    out = tmp_path / "study"
    runs = [out / "runs" / f"{optim}-seed42" for optim in OPTIMS]
    # While the workers import (seconds): no run has begun.
    _ctrl_c(_compare(data, out), tmp_path, lambda process: len(children(process.pid)) >= 2, "both workers started",
            tmp_path / "pause-1")
    assert not (out / "runs").exists()
    _ctrl_c(_compare(data, out), tmp_path, lambda _: waiting(tmp_path / "pause-2") == 2,
            "both runs trained an epoch", tmp_path / "pause-2")
    assert not (out / "summary.json").exists() and not (out / "report.md").exists()
    for run in runs:  # each stopped part-way: saved, told so, and never tested as if finished
        status = json.loads((run / "status.json").read_text(encoding="utf-8"))
        saved = load_checkpoint(run / "last.pt")["progress"]
        assert status["status"] == "interrupted" and status["epochs_done"] == saved["epoch"] < EPOCHS, run
        assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()
    # Each met the Ctrl-C as it began epoch 2: vanilla-sgd stopped after that epoch's first step (inside it), adam
    # (one step an epoch) at its end.
    saved = [load_checkpoint(run / "last.pt")["progress"] for run in runs]
    assert [(p["epoch"], p["step"]) for p in saved] == [(1, 1), (2, 0)]

    again = subprocess.Popen(_compare(data, out), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        stdout, stderr = again.communicate(timeout=600)
    finally:
        if again.poll() is None:
            _kill_all(again)
    assert again.returncode == 0, stdout + stderr
    assert sum("[resumed]" in line for line in stdout.splitlines()) == 2, stdout
    straight = tmp_path / "straight"
    assert run_study(_spec(data, straight), progress=False, log=quiet).status == "complete"
    assert run_results(out) == run_results(straight)
    assert summary_without_time(out) == summary_without_time(straight)


def test_tune_lr_with_jobs_interrupted_in_the_sweep_resumes_to_the_tuned_study_run_one_after_another(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The grid cut to two rates half a decade apart (widened by one at most), to keep the test short: the driver (this
    # process) plans every sweep run, so the worker processes need no patch.
    monkeypatch.setattr(lr_sweep, "INITIAL_STEPS", (0, 1))
    monkeypatch.setattr(lr_sweep, "sweep_in_rounds",
                        functools.partial(tuning.sweep_in_rounds, initial=(0, 1), limit=1))
    spec = tiny_spec(data, tmp_path / "straight", threads_per_run=1, tune_lr=True)
    assert run_study(spec, progress=False, log=quiet).status == "complete"

    jobs = dataclasses.replace(spec, out=tmp_path / "jobs", jobs=2)
    told = compare_module.result_line

    def ctrl_c_once(run, how: str, test_acc: float | None) -> str:
        """Ctrl-C as the driver learns that the first sweep run ended, the second one still running or just done."""
        if not ended:
            os.kill(os.getpid(), signal.SIGINT)
        ended.append(run.label)
        return told(run, how, test_acc)

    ended: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(compare_module, "result_line", ctrl_c_once)
        lines: list[str] = []
        assert run_study(jobs, progress=False, log=lines.append).status == "interrupted"
    assert len(ended) <= 2 and all(label.startswith("sweep") for label in ended), ended
    assert len(list((jobs.out / "sweep").iterdir())) == 2  # of the 4: none started after the Ctrl-C
    assert sum(line.startswith(INTERRUPTED) for line in lines) == 1, lines
    assert not (jobs.out / "tuning.json").exists() and not (jobs.out / "runs").exists()
    assert run_study(jobs, progress=False, log=quiet).status == "complete"
    assert _sweep_results(jobs.out) == _sweep_results(spec.out)
    assert run_results(jobs.out) == run_results(spec.out)
    assert summary_without_time(jobs.out) == summary_without_time(spec.out)  # the tuning record included


def _sweep_results(out: Path) -> dict[str, list[list[str]]]:
    return {run.name: history_without_time(run) for run in sorted((out / "sweep").iterdir())}

"""Training under torchrun: sharding, agreement, and real two-process runs on the CPU (gloo)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from catsdogs import interrupts
from catsdogs.cli import main
from catsdogs.errors import UsageError
from catsdogs.training.distributed import SOLO, Team, shard_batches, team_from_environment
from catsdogs.training.loop import stop_on_signals
from tests.helpers import (ABORT_AT_EXIT, TRAIN, AbortedAfterSaving, aborted_after_saving, assert_finished, children,
                           finish, history_without_time, paused_at_epoch_2, split_fixture, torchrun,
                           waiting, write_tiny_split)

def test_shards_cover_each_batch_once_in_order() -> None:
    order = [np.arange(0, 16), np.arange(16, 31), np.arange(31, 33)]
    shards = [shard_batches(order, Team(rank, 2)) for rank in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    for batch, first, second in zip(order, *shards):
        assert np.array_equal(np.concatenate([first, second]), batch)
        assert abs(len(first) - len(second)) <= 1
    three = [shard_batches(order, Team(rank, 3)) for rank in range(3)]
    # The last batch of 2 cannot feed 3 processes: every process leaves it out, so all take 2 steps.
    assert [len(s) for s in three] == [2, 2, 2]
    assert shard_batches(order, SOLO) == order


def test_team_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert team_from_environment() == SOLO and not SOLO.enabled and SOLO.main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    team = team_from_environment()
    assert team == Team(3, 4, 1) and team.enabled and not team.main
    monkeypatch.setenv("RANK", "three")
    with pytest.raises(UsageError, match="must be integers"):
        team_from_environment()


def test_under_torchrun_ctrl_c_delivered_twice_is_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: clock[0])
    with stop_on_signals(lambda _: None, repeat_window=5.0) as stop:
        stop.handle(signal.SIGINT, None)
        clock[0] += 2.0
        stop.handle(signal.SIGINT, None)  # torchrun passing on the same Ctrl-C, late: no abort
        assert stop.requested
        clock[0] += 4.0
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)  # a second, deliberate Ctrl-C
    with stop_on_signals(lambda _: None) as alone:  # one process: no echo to wait for
        alone.handle(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            alone.handle(signal.SIGINT, None)


def test_other_commands_refuse_to_run_under_torchrun() -> None:
    result = CliRunner().invoke(main, ["evaluate"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 2
    assert "only `catsdogs train` runs under torchrun; run `catsdogs evaluate` as one process" in result.output
    other = CliRunner().invoke(main, ["evaluate"], env={"WORLD_SIZE": "2", "RANK": "1"})
    assert other.exit_code == 2 and other.output == ""  # said once, by process 0


def test_a_process_that_died_is_one_line_from_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    import catsdogs.training.train

    def lost(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:28297: "
                           "Connection reset by peer")

    monkeypatch.setattr(catsdogs.training.train, "train", lost)
    result = CliRunner().invoke(main, ["train", "--optim", "adam"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: another process of this torchrun run stopped (killed, or failed: see "
                                    "its message above, if any, and torchrun's report): [../third_party/gloo")
    assert result.output.rstrip().endswith("Connection reset by peer")
    alone = CliRunner().invoke(main, ["train", "--optim", "adam"])  # not under torchrun: a bug, traced
    assert isinstance(alone.exception, RuntimeError)


@pytest.mark.parametrize("status, code", [("finished", 0), ("interrupted", 130)])
def test_a_torchrun_process_ends_at_once_when_its_run_is_saved(monkeypatch: pytest.MonkeyPatch, status: str,
                                                                code: int) -> None:
    # The teardown it skips aborted processes of finished runs now and then (SIGABRT, 'terminate called
    # without an active exception'): once in 25 two-process runs beside two busy loops, see end_torchrun_process.
    import catsdogs.cli.train_commands
    import catsdogs.training.train
    from catsdogs.training.train import TrainResult

    class Ended(Exception):
        pass

    ends: list[int] = []

    def end(value: int) -> None:
        ends.append(value)
        raise Ended

    monkeypatch.setattr(catsdogs.cli.train_commands.os, "_exit", end)
    monkeypatch.setattr(catsdogs.cli.train_commands, "ignore_ctrl_c", lambda: None)
    monkeypatch.setattr(catsdogs.training.train, "train", lambda *args, **kwargs: TrainResult(Path("runs/x"), 1, status))
    result = CliRunner().invoke(main, ["train", "--optim", "adam"], env={"WORLD_SIZE": "2", "RANK": "1"})
    assert isinstance(result.exception, Ended) and ends == [code]
    alone = CliRunner().invoke(main, ["train", "--optim", "adam"])  # one process: an ordinary exit
    assert alone.exit_code == code and ends == [code]


# ---- real runs: two processes on the CPU ------------------------------------------------------

def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_run(a: Path, b: Path, context: str = "") -> None:
    first, second = weights(a / "last.pt"), weights(b / "last.pt")
    differing = {k: float((first[k].float() - second[k].float()).abs().max()) for k in first
                 if not torch.equal(first[k], second[k])}
    # On failure, say how: which tensors by how much, and both histories (a rare failure must be diagnosable).
    assert not differing, f"{context}{differing}\n{history_without_time(a)}\n{history_without_time(b)}"
    assert history_without_time(a) == history_without_time(b)


data = split_fixture((40, 8, 8), size=96, scope="module")


@pytest.fixture(scope="module")
def straight(data: Path) -> tuple[Path, str]:
    """Three epochs on two processes in one go."""
    process = torchrun(["--data", str(data), "--epochs", "3", "--out", "runs/straight", *TRAIN], data.parent)
    out = finish(process)
    assert process.returncode == 0, out
    return data.parent / "runs" / "straight", out


def test_two_processes_train_one_run(straight: tuple[Path, str]) -> None:
    run, out = straight
    assert sorted(p.name for p in run.parent.iterdir()) == ["straight"]  # one folder, not one per process
    for name in ("config.yaml", "history.csv", "last.pt", "best.pt", "status.json"):
        assert (run / name).is_file(), name
    assert out.count("epoch 1/3  train loss") == 1  # only process 0 speaks
    assert "batch 16, 8 per process" in out
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["hardware"] == "cpu, fp32, 2 processes (torchrun)"
    with (run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_acc"]) >= 0.9  # the tiny colours are easy: it really learned
    assert float(rows[-1]["train_acc"]) * 80 == pytest.approx(round(float(rows[-1]["train_acc"]) * 80))  # of all 80
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert len(state["ranks"]) == 2 and not torch.equal(state["ranks"][0]["aug_gen"], state["ranks"][1]["aug_gen"])
    assert not any(key.startswith("module.") for key in state["model"])  # plain weights, loadable anywhere


def with_second_attempt(attempt: Callable[[str], None], name: str) -> None:
    """Run `attempt(name)`, and once more under another run name only if a process aborted at exit after its
    run was saved (AbortedAfterSaving); the first abort is reported as a warning. Any other failure fails at
    once: a retry on any failure lets a bug that fails 30% of the time pass 91% of runs."""
    try:
        attempt(name)
    except AbortedAfterSaving as first:
        warnings.warn(f"a process aborted at exit after its run was saved, trying again: {first}")
        attempt(f"{name}-again")


def test_only_an_abort_after_the_run_was_saved_is_tried_again() -> None:
    names: list[str] = []

    def aborts_once(name: str) -> None:
        names.append(name)
        if len(names) == 1:
            raise AbortedAfterSaving("terminate called without an active exception")

    with pytest.warns(UserWarning, match="aborted at exit after its run was saved"):
        with_second_attempt(aborts_once, "x")
    assert names == ["x", "x-again"]

    def wrong(name: str) -> None:
        names.append(name)
        raise AssertionError(f"weights differ in {name}")

    names.clear()
    with pytest.raises(AssertionError, match="weights differ in y$"):
        with_second_attempt(wrong, "y")
    assert names == ["y"]  # not retried

    def always_aborts(name: str) -> None:
        names.append(name)
        raise AbortedAfterSaving(name)

    names.clear()
    with pytest.warns(UserWarning), pytest.raises(AbortedAfterSaving, match="z-again"):
        with_second_attempt(always_aborts, "z")
    assert names == ["z", "z-again"]  # a second attempt, no third


def torchrun_report(*exitcodes: int) -> str:
    """What torchrun prints when its processes fail with these exit codes (negative: killed by a signal)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {rank: ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code, error_file="")
                for rank, code in enumerate(exitcodes)}
    return ChildFailedError("catsdogs", failures).format_msg()


def test_the_abort_after_saving_is_told_from_every_other_failure(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"saved")
    (run / "status.json").write_text('{"status": "finished"}')
    aborted = f"epoch 3/3 ...\n{ABORT_AT_EXIT}\n{torchrun_report(-6)}"
    assert aborted_after_saving(aborted, run)
    assert not aborted_after_saving(f"{ABORT_AT_EXIT}\n{torchrun_report(-6, 1)}", run)  # the other one failed too
    assert not aborted_after_saving(f"{ABORT_AT_EXIT}\n{torchrun_report(-11)}", run)  # a crash, not the abort
    assert not aborted_after_saving(f"Traceback ...\n{torchrun_report(-6)}", run)  # another abort, not this one
    assert not aborted_after_saving(ABORT_AT_EXIT, run)  # no process was reported as failed
    (run / "status.json").write_text('{"status": "interrupted"}')
    assert not aborted_after_saving(aborted, run)  # the run was not completed
    (run / "status.json").unlink()
    assert not aborted_after_saving(aborted, run)

    (run / "status.json").write_text('{"status": "finished"}')
    torchrun_stand_in = [sys.executable, "-c", f"import sys; print({aborted!r}); sys.exit(1)"]
    with pytest.raises(AbortedAfterSaving):
        assert_finished(subprocess.Popen(torchrun_stand_in, stdout=subprocess.PIPE, text=True), run)
    with pytest.raises(AssertionError) as failed:  # without the run to look at: an ordinary failure
        assert_finished(subprocess.Popen(torchrun_stand_in, stdout=subprocess.PIPE, text=True))
    assert failed.type is AssertionError


def test_extending_a_two_process_run_equals_the_straight_one(data: Path, straight: tuple[Path, str]) -> None:
    process = torchrun(["--data", str(data), "--epochs", "2", "--out", "runs/extended", *TRAIN], data.parent)
    assert_finished(process)
    run = data.parent / "runs" / "extended"
    resumed = torchrun(["--resume", str(run), "--epochs", "3"], data.parent)
    out = finish(resumed)
    assert resumed.returncode == 0, out
    assert_same_run(straight[0], run)


def test_passes_smaller_than_a_process_s_batch_give_the_same_run(data: Path, straight: tuple[Path, str]) -> None:
    # 8 images per process a step, in passes of 3, 3 and 2: the gradients are averaged once, at the last.
    process = torchrun(["--data", str(data), "--epochs", "3", "--out", "runs/passes", "--micro-batch", "3", *TRAIN],
                       data.parent)
    assert_finished(process)
    run = data.parent / "runs" / "passes"
    first, second = weights(straight[0] / "last.pt"), weights(run / "last.pt")
    assert all(torch.allclose(first[k], second[k], atol=1e-5) for k in first)
    rows = [history_without_time(r)[1:] for r in (straight[0], run)]
    assert np.allclose(np.array(rows[0], dtype=float), np.array(rows[1], dtype=float), atol=2e-6)


# catsdogs with one more model: a linear one, with neither dropout (whose masks differ per process) nor batch
# norm (whose statistics are per process), so that two processes and one compute the very same gradient.
LINEAR_CATSDOGS = """
import torch
from catsdogs.cli import main
from catsdogs.training.models import register_model

@register_model("linear", "pooled pixels to logits", min_image_size=8)
def build(num_classes, image_size):
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, num_classes))

main()
"""


def test_two_processes_step_as_one_under_class_weights_and_uneven_shares(tmp_path: Path) -> None:
    """Each step's gradient is the whole batch's: 15 images a step go 8 and 7 to the processes, in passes of 4,
    and the classes (20 cats, 10 dogs) weigh 0.75 and 1.5. Two processes must train what one process does."""
    data = write_tiny_split(tmp_path, per_class=(20, 4, 4), size=32)
    for index in range(10, 20):
        (data / "train" / "Dog" / f"{index}.jpg").unlink()
    script, settings = tmp_path / "linear_catsdogs.py", tmp_path / "settings.yaml"
    script.write_text(LINEAR_CATSDOGS)
    settings.write_text("hflip: 0.0\n")  # flips are drawn per process: none, so that both runs see the same images
    args = ["--data", str(data), "--config", str(settings), "--model", "linear", "--image-size", "32", "--optim",
            "minibatch-sgd", "--lr", "0.5", "--batch-size", "15", "--epochs", "2", "--class-weights", "balanced",
            "--device", "cpu", "--precision", "fp32"]
    alone = subprocess.run([sys.executable, str(script), "train", *args, "--out", str(tmp_path / "one")],
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert_finished(torchrun([*args, "--micro-batch", "4", "--out", str(tmp_path / "two")], tmp_path,
                             program=(str(script),)))
    one, two = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    assert all(torch.allclose(one[k], two[k], rtol=0, atol=1e-6) for k in one), {
        k: float((one[k] - two[k]).abs().max()) for k in one}
    rows = [np.array(history_without_time(tmp_path / run)[1:], dtype=float) for run in ("one", "two")]
    assert np.allclose(rows[0], rows[1], rtol=0, atol=1e-6)  # the weighted training loss too


def test_ctrl_c_stops_every_process_at_the_same_step_and_resumes_exactly(data: Path,
                                                                      straight: tuple[Path, str]) -> None:
    # Tried again only on the abort at exit after a complete save (see aborted_after_saving), which
    # end_torchrun_process now prevents; any other failure fails at once. The retry on any failure hid
    # another flake: once in 8 loops of this file, the resumed run differed from the straight one (epoch 2,
    # weights by up to 0.011), every process exiting 0. Its cause is not found yet; it must show, not pass.
    with_second_attempt(lambda name: interrupt_and_resume(data, straight[0], name), "stopped")


def interrupt_and_resume(data: Path, straight: Path, name: str) -> None:
    """The straight run's command, Ctrl-C'd in its second epoch (both processes wait there until the signal
    reaches them), then resumed: it must equal the straight run."""
    run = data.parent / "runs" / name
    pause = data.parent / f"{name}-pause"
    process = torchrun(["--data", str(data), "--epochs", "3", "--out", str(run), *TRAIN], data.parent,
                       env=paused_at_epoch_2(pause), start_new_session=True)
    deadline = time.monotonic() + 240
    while waiting(pause) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    workers = children(process.pid)
    assert len(workers) == 2, (workers, finish(process) if process.poll() is not None else "")
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: torchrun and both workers
    time.sleep(0.5)
    for pid in workers:  # torchrun's copy of the signal, arriving late (after the save, often)
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    out = finish(process)
    assert "interrupted in epoch 2 after step 1;" in out, out  # its first step: the epoch has 5 (80 photos, batch 16)
    stopped_at = next(line for line in out.splitlines() if "interrupted in epoch" in line).split(";")[0]
    assert f"resume with: torchrun --standalone --nproc_per_node=2 -m catsdogs train --resume {run}" in out, out
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert (state["progress"]["epoch"], state["progress"]["step"]) == (1, 1)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert_finished(torchrun(["--resume", str(run)], data.parent), run)
    assert_same_run(straight, run, context=f"resumed after it was {stopped_at}: ")


def test_a_batch_smaller_than_the_team_is_refused_before_anything_starts(data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from catsdogs.training.config import TrainConfig
    from catsdogs.training.train import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), optim="adam", image_size=96, batch_size=2,
                      device="cpu")
    with pytest.raises(UsageError, match="--batch-size 2 is smaller than the 3 processes"):
        train(cfg, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_a_lost_peer_is_one_line_only_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from catsdogs.training.distributed import lost_peer_message

    error = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert lost_peer_message(error) is None  # one process: a bug to trace
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_peer_message(error) == (
        "another process of this torchrun run stopped (killed, or failed: see its message above, if any, and "
        "torchrun's report): [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert lost_peer_message(RuntimeError("shape mismatch")) is None


def test_an_unreadable_photo_is_warned_once_and_recorded_whichever_process_met_it(tmp_path: Path) -> None:
    data = write_tiny_split(tmp_path, per_class=(50, 1, 1), size=32)  # 102 photos: one bad one is under 1%
    victim = data / "train" / "Dog" / "7.jpg"
    victim.write_bytes(b"garbage, not a jpeg")
    process = torchrun(["--data", str(data), "--epochs", "2", "--out", "runs/bad", "--cache", "off", "--workers", "0",
                        *TRAIN], tmp_path)
    out = assert_finished(process)
    assert out.count("warning:") == 1, out  # in epoch 1, by process 0, whichever process decoded it
    assert f"warning: skipped 1 unreadable image(s): {victim}" in out
    status = json.loads((tmp_path / "runs" / "bad" / "status.json").read_text())
    assert status["unreadable_images"] == [str(victim)]

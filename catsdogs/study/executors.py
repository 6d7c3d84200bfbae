"""Running a study's runs N at once, each in a process of its own, pinned to its share of the CPUs or to one GPU."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from catsdogs.cpus import usable_cpus
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.interrupts import on_ctrl_c
from catsdogs.training.placement import use_threads

# What a worker does: work(item) in a fresh process; the driver learns the result and reads the rest from files.
Work = Callable[[Any], Any]
# Called in the driver as each item ends, with its result and seconds; returns False to stop the study.
Done = Callable[[Any, Any, float], bool]
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Slot:
    """One run's share of this machine: its threads, the CPUs it may use (empty: any), the GPU it sees."""

    threads: int
    cpus: tuple[int, ...] = ()
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES for the run; None leaves the GPUs alone


def plan_slots(jobs: int, threads: int | None, device: str) -> list[Slot]:
    """`jobs` slots: one GPU each where the runs train on CUDA GPUs, else an equal share of the CPUs.

    Each slot gets `threads` threads, or the usable CPUs divided by `jobs`; on Linux each CPU slot is
    pinned to CPUs of its own when they divide without overlap.
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    per_run = threads or max(1, usable_cpus() // jobs)
    gpus = _visible_gpus() if device in ("auto", "cuda") else []
    if gpus:  # untested here: no GPU on the machines the tests run on
        if jobs > len(gpus):
            raise UsageError(f"--jobs {jobs} asks for more runs at once than the {len(gpus)} GPU(s) here: one run "
                             f"per GPU, so use --jobs {len(gpus)} or fewer")
        return [Slot(per_run, gpu=gpu) for gpu in gpus[:jobs]]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if per_run * jobs > len(cpus):
        return [Slot(per_run)] * jobs
    return [Slot(per_run, tuple(cpus[k * per_run:(k + 1) * per_run])) for k in range(jobs)]


def _visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in visible.split(",")] if visible else []
    return names[:torch.cuda.device_count()] if names else [str(k) for k in range(torch.cuda.device_count())]


class _Forward:
    """Passes each SIGINT/SIGTERM the driver gets on to the running workers: a first one stops them
    after their current step (each saves last.pt), a second one at once, as `train` does."""

    def __init__(self, running: dict[subprocess.Popen, Any]) -> None:
        self.running, self.requested, self.signum = running, False, None

    def handle(self, signum: int, frame: Any) -> None:
        self.requested, self.signum = True, signum
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signum)


class ProcessExecutor:
    """Runs items N at a time, each in a new Python process (`serve`), in the order given.

    The workers run in a session of their own, so a Ctrl-C at the terminal reaches the driver alone,
    which passes it on once to every worker; `setup` (a module-level function) prepares each process.
    """

    def __init__(self, slots: Sequence[Slot], setup: Callable[[], None] | None = None) -> None:
        self.slots, self.setup = list(slots), setup

    def run_all(self, work: Work, items: Sequence[Any], done: Done, label: Callable[[Any], str] = str) -> bool:
        """Run `work(item)` for every item; False when the study stopped (Ctrl-C, or `done` said so)."""
        pending, free = list(items), list(self.slots)
        running: dict[subprocess.Popen, tuple[Any, Slot, Path, float]] = {}
        forward = _Forward(running)
        failure: str | None = None
        with tempfile.TemporaryDirectory(prefix="catsdogs-jobs-") as scratch, \
                on_ctrl_c(forward, signals=(signal.SIGINT, signal.SIGTERM)):
            while running or (pending and not forward.requested and failure is None):
                while pending and free and not forward.requested and failure is None:
                    item, slot = pending.pop(0), free.pop(0)
                    result_path = Path(scratch) / f"{len(pending)}.json"
                    running[_start(work, item, slot, result_path, self.setup)] = (item, slot, result_path,
                                                                                  time.perf_counter())
                time.sleep(POLL_SECONDS)
                for process in [p for p in running if p.poll() is not None]:
                    item, slot, result_path, started = running.pop(process)
                    free.append(slot)
                    outcome = _read_result(result_path)
                    if outcome.get("interrupted"):
                        forward.requested = True
                        continue
                    if "result" not in outcome:
                        failure = failure or f"{label(item)}: {outcome.get('error') or _died(process.returncode)}"
                        forward.handle(signal.SIGINT, None)  # stop the others cleanly: the study cannot finish
                        continue
                    if not done(item, outcome["result"], time.perf_counter() - started) and not forward.requested:
                        forward.handle(signal.SIGINT, None)
        if failure is not None:
            raise CatsdogsError(failure)
        return not forward.requested and not pending

    def close(self) -> None:
        """Nothing to let go: every worker has ended when run_all returns."""


def _died(code: int) -> str:
    if code < 0:
        return f"its process was killed by signal {signal.Signals(-code).name}; run the same command to resume it"
    return f"its process failed with exit code {code} (see the messages above)"


def _start(work: Work, item: Any, slot: Slot, result_path: Path, setup: Callable[[], None] | None
           ) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(slot.threads)}
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    # The worker starts with SIGINT blocked, so a Ctrl-C passed on while it imports waits for `serve` (a
    # KeyboardInterrupt in its imports would end it with a traceback, as a failed run).
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process = subprocess.Popen([sys.executable, "-c", "from catsdogs.study.executors import serve; serve()"],
                                   stdin=subprocess.PIPE, env=env, start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    assert process.stdin is not None
    process.stdin.write(pickle.dumps((work, item, slot, str(result_path), setup)))
    process.stdin.close()
    return process


def _read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def serve() -> None:
    """A worker process: read (work, item, slot, result file, setup) from stdin, run it, write its result."""
    work, item, slot, result_path, setup = pickle.load(sys.stdin.buffer)
    if slot.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, slot.cpus)
    if setup is not None:
        setup()
    use_threads(slot.threads)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one passed on while it started comes now
        outcome: dict[str, Any] = {"result": work(item)}
    except KeyboardInterrupt:  # the driver's Ctrl-C outside a training loop (which stops cleanly on its own)
        outcome = {"interrupted": True}
    except (CatsdogsError, OSError) as exc:  # a one-line error for the driver to tell; any other is a bug to trace
        outcome = {"error": str(exc)}
    Path(result_path).write_text(json.dumps(outcome), encoding="utf-8")
    sys.exit(1 if "error" in outcome else 0)

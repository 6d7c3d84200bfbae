"""compare --ray on a real two-node Ray cluster on loopback: both nodes used, same results as --jobs, killed workers retried."""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from catsdogs.study.compare import run_study
from tests.helpers import children, quiet, run_results, summary_without_time, tiny_spec

ROOT = Path(__file__).resolve().parents[2]
HEAD_IP, SECOND_IP = "127.0.0.2", "127.0.0.3"  # loopback only: never 127.0.0.1 (Ray swaps in the machine's address)
CLUSTER_SECONDS = 60  # `ray start` and `ray stop` may take no longer


def ray_or_skip() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed, and CI must run the Ray tests: pip install -e '.[dev]'")
        pytest.skip("ray is not installed (pip install 'catsdogs[ray]')")


def ray_cli(*args: str, env: dict[str, str]) -> None:
    ray = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray), *args], check=True, env=env, timeout=CLUSTER_SECONDS, capture_output=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HEAD_IP, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head on 127.0.0.2 and a second node on 127.0.0.3, one CPU each; stopped whatever happens."""
    ray_or_skip()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats"]
    try:
        ray_cli("start", "--head", "--node-ip-address", HEAD_IP, "--port", str(port), "--include-dashboard",
                "false", "--temp-dir", str(temp), *common, env=env)
        ray_cli("start", "--address", f"{HEAD_IP}:{port}", "--node-ip-address", SECOND_IP, *common, env=env)
        yield f"{HEAD_IP}:{port}"
    finally:
        stop_cluster((f"{temp}/", f"={HEAD_IP}:{port}\0"))  # in its temp folder; its address as an argument


def stop_cluster(marks: tuple[str, ...]) -> None:
    """SIGKILL the processes whose command line holds one of `marks`, and their children (Ray's agents and
    workers), then wait until each has ended.

    What `ray stop --force` does, but for this cluster alone, and without its wait for each process to be
    reaped: on a machine whose init reaps orphans only every second or two, that wait took 7 s."""
    found = {pid for mark in marks for pid in processes_named(mark)}
    todo = list(found)
    while todo:
        grown = set(children(todo.pop())) - found
        found |= grown
        todo.extend(grown)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    give_up = time.monotonic() + CLUSTER_SECONDS
    while time.monotonic() < give_up and not all(map(ended, found)):
        time.sleep(0.05)


def ended(pid: int) -> bool:
    """Whether a process is gone or a zombie (dead, waiting for its parent to reap it)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def kill_a_worker_mid_run(out: Path, killed: dict[int, str], give_up: float) -> None:
    """SIGKILL the Ray workers once a run is seen mid-way: its first epoch saved (last.pt, one row of history)
    and no status.json yet. Noting each worker's node (its parent raylet's address). After the last epoch's
    save there is nothing left to resume, so a kill then would prove no retry (CI met that once)."""
    workers: list[int] = []
    for turn in itertools.count():
        if time.monotonic() >= give_up or killed:
            return
        if not workers or turn % 50 == 0:  # the workers' pids ready beforehand: the kill must land in a short window
            workers = processes_named("run_on_node")
        for run in (out / "runs").glob("*"):
            if (run / "last.pt").is_file() and not (run / "status.json").is_file() and first_epoch_only(run):
                workers = [pid for pid in workers if still_running_a_run(pid)]
                nodes = {pid: node_of_worker(pid) for pid in workers}
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed[pid] = nodes[pid]
                    except ProcessLookupError:
                        pass
                workers = []
                break
        time.sleep(0.005)  # a run's second epoch takes tens of milliseconds here: CI once missed it polling at 50


def still_running_a_run(pid: int) -> bool:
    """Whether the worker still runs a study's run (its process title names the task), not idle or gone."""
    try:
        return b"run_on_node" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def first_epoch_only(run: Path) -> bool:
    """Whether the run's history.csv holds exactly one epoch (of tiny_spec's two)."""
    try:
        return len((run / "history.csv").read_text(encoding="utf-8").splitlines()) == 2
    except OSError:
        return False


def node_of_worker(pid: int) -> str:
    """The node a Ray worker belongs to: the address its raylet (the worker's parent) was started with."""
    try:
        parent = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[1]
        line = (Path("/proc") / parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return "unknown"
    found = re.search(r"node[_-]ip[_-]address[= ](\S+)", line)
    return found.group(1) if found else "unknown"


def processes_named(part: str) -> list[int]:
    """Pids whose command line (a Ray worker's process title) holds `part`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if part.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass  # ended meanwhile
    return found


def test_ray_runs_on_both_nodes_like_jobs_and_retries_a_killed_worker(cluster: str, study_split: Path,
                                                                       straight_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    killed: dict[int, str] = {}
    killer = threading.Thread(target=kill_a_worker_mid_run, args=(out, killed, time.monotonic() + 90), daemon=True)
    killer.start()
    # Two runs, one CPU each, on two one-CPU nodes: they run at once, one on each node.
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    result = run_study(tiny_spec(study_split, out, ray=cluster, threads_per_run=1), progress=False, log=quiet)
    killer.join()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # Ray's are gone
    assert result.status == "complete"
    assert killed, "no worker was seen mid-run to kill"
    assert any("resuming" in (run / "train.log").read_text(encoding="utf-8") for run in (out / "runs").iterdir())
    # Each run's last attempt records its node; a killed attempt's node is its raylet's. The two runs start at
    # once on the two one-CPU nodes, so between them they name both, wherever Ray put the retries.
    nodes = {json.loads((run / "status.json").read_text(encoding="utf-8"))["node"] for run in (out / "runs").iterdir()}
    assert nodes | set(killed.values()) == {HEAD_IP, SECOND_IP}, (nodes, killed)
    # The same runs as one after another (conftest.py's study), which test_parallel shows --jobs gives too.
    assert run_results(out) == run_results(straight_study)
    assert summary_without_time(out) == summary_without_time(straight_study)


def test_only_the_ray_runner_imports_ray() -> None:
    for path in (ROOT / "catsdogs").rglob("*.py"):
        names = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert "ray" not in names or path.name == "ray_runner.py", path

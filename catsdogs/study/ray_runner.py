"""Running a study's runs as Ray tasks on a cluster; the only module of catsdogs that imports Ray."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.study.executors import Done, Work
from catsdogs.training.placement import NODE_ENV, use_threads

LOCAL_NODE_IP = "127.0.0.2"  # `--ray local` binds here: loopback only, never the machine's network address
MAX_RETRIES = 3  # a task whose worker died (SIGKILL, a lost node) runs again and resumes from last.pt
POLL_SECONDS = 0.2


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'catsdogs[ray]'") from None
    return ray


def _connect(ray: Any, address: str) -> None:
    """Join the cluster at `address`, or start one on loopback for `local`."""
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                               "logging_level": "WARNING", "configure_logging": True}
    if address == "local":
        options.update(address="local", _node_ip_address=LOCAL_NODE_IP)
    else:
        host = address.rpartition(":")[0]
        try:
            if host and ipaddress.ip_address(host).is_loopback:  # a cluster on loopback: join it there too
                options["_node_ip_address"] = host
        except ValueError:
            pass  # a host name
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CatsdogsError(f"--ray {address}: cannot reach a Ray cluster there ({str(exc).splitlines()[0]})") \
            from None


def _threads_and_resources(ray: Any, device: str, threads: int | None) -> tuple[int, dict[str, float]]:
    """Each task's threads and what it asks Ray for: one GPU where the cluster has GPUs, else CPUs."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    gpu_nodes = [res for res in nodes if res.get("GPU", 0) >= 1]
    if gpu_nodes and device in ("auto", "cuda"):  # untested here: no GPU on the machines the tests run on
        per_run = threads or max(1, int(min(res.get("CPU", 1) // res["GPU"] for res in gpu_nodes)))
        return per_run, {"num_gpus": 1, "num_cpus": per_run}
    if device == "cuda":
        raise CatsdogsError("--device cuda, but the Ray cluster has no GPU")
    per_run = threads or 1
    if not any(res.get("CPU", 0) >= per_run for res in nodes):
        raise CatsdogsError(f"--threads-per-run {per_run}: no node of the Ray cluster has that many CPUs")
    return per_run, {"num_cpus": per_run}


def run_on_node(work: Work, item: Any, threads: int, shared: list[str], setup: Callable[[], None] | None
                ) -> dict[str, Any]:
    """One Ray task: check the node sees the shared folders, then run `work(item)` with `threads` threads."""
    import ray

    node = ray.util.get_node_ip_address()
    missing = [path for path in shared if not Path(path).is_dir()]
    if missing:
        return {"error": f"node {node} has no {missing[0]}: every node must see the data and the study folder at "
                         "the same path (a shared file system)"}
    os.environ[NODE_ENV] = node
    if setup is not None:
        setup()
    use_threads(threads)
    started = time.perf_counter()
    try:
        return {"result": work(item), "seconds": time.perf_counter() - started}
    except KeyboardInterrupt:  # ray.cancel outside a training loop (which stops cleanly on its own)
        return {"interrupted": True}
    except (CatsdogsError, OSError) as exc:
        return {"error": f"node {node}: {exc}"}


class RayExecutor:
    """Runs items as Ray tasks (Ray Core), submitted in the order given; results come back as files."""

    def __init__(self, address: str, device: str, threads: int | None, shared: Sequence[Path],
                 setup: Callable[[], None] | None = None) -> None:
        self.ray = _import_ray()  # a missing extra is told before the study folder is made
        self.address, self.device, self.threads, self.setup = address, device, threads, setup
        self.shared = [str(Path(path).resolve()) for path in shared]
        self.connected = False
        self.handlers: dict[int, Any] = {}

    def run_all(self, work: Work, items: Sequence[Any], done: Done, label: Callable[[Any], str] = str) -> bool:
        """Run `work(item)` for every item on the cluster; False when the study stopped (Ctrl-C, or `done`)."""
        ray = self.ray
        if not self.connected:
            # ray.init installs its own SIGTERM handler in this process: close() gives back the caller's.
            self.handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
            _connect(ray, self.address)
            self.connected = True
        threads, resources = _threads_and_resources(ray, self.device, self.threads)
        task = ray.remote(max_retries=MAX_RETRIES, max_calls=1, **resources)(run_on_node)
        refs = {task.remote(work, item, threads, self.shared, self.setup): item for item in items}
        stopped, failure = False, None
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    item = refs.pop(ref)
                    outcome = self._outcome(ray, ref)
                    if outcome.get("interrupted"):
                        stopped = True
                    elif "result" not in outcome:
                        failure = failure or f"{label(item)}: {outcome.get('error')}"
                    elif not done(item, outcome["result"], outcome["seconds"]):
                        stopped = True
                if (stopped or failure) and refs:
                    self._stop(ray, refs)
        except KeyboardInterrupt:
            stopped = True
            self._stop(ray, refs)
        if failure is not None:
            raise CatsdogsError(failure)
        return not stopped

    @staticmethod
    def _outcome(ray: Any, ref: Any) -> dict[str, Any]:
        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return {"interrupted": True}
        except ray.exceptions.RayError as exc:  # out of retries, a lost node: one line
            return {"error": str(exc).strip().splitlines()[0]}

    @staticmethod
    def _stop(ray: Any, refs: dict[Any, Any]) -> None:
        """Cancel every task: a running one stops after its step and saves last.pt; then wait for them."""
        for ref in refs:
            ray.cancel(ref)
        try:
            ray.wait(list(refs), num_returns=len(refs))
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            for ref in refs:
                ray.cancel(ref, force=True)
        refs.clear()

    def close(self) -> None:
        """Leave the cluster (and end one that `local` started)."""
        if self.connected:
            self.ray.shutdown()
            self.connected = False
            for signum, handler in self.handlers.items():
                signal.signal(signum, handler)

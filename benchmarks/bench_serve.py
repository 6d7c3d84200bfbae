"""Photos/s and latency of `catsdogs serve` at 1, 8 and 32 concurrent clients, batching on and off, against
`catsdogs predict` on the same photos in the same run.

    python benchmarks/bench_serve.py RUN_DIR [--photos ../shared/data/PetImages-dev] [--requests 320]

The reference is what `catsdogs predict` does (predict_photos: decode in threads, batches of 128)
on the same photos with the same model the server serves (its verified ONNX export if the run
has one, else the checkpoint), timed after a warm-up. Each server setting (--settings, as
MAX_BATCH/MAX_WAIT_MS; max batch 1 is batching off) is a `catsdogs serve` process on 127.0.0.1;
clients are threads of this process, each with one kept-alive connection posting one photo per
request, --requests in all per cell after a warm-up. Photos/s is requests over the cell's wall
time; p50/p99 are of each request's round trip as the client saw it. The clients share the
machine's cores with the server, so on a small machine they take some of its time.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from catsdogs.cpus import usable_cpus
from catsdogs.inference.predict import Classifier, collect_photos, predict_photos
from catsdogs.inference.served import load_served
from catsdogs.process import configure_process

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "PetImages-dev"
CLIENTS = (1, 8, 32)


def offline_photos_per_second(classifier: Classifier, photos: list[Path], repeat: int) -> float:
    """`catsdogs predict`'s photos/s on `photos` (the median of `repeat` passes after one warm-up pass)."""
    predict_photos(classifier, photos, progress=False)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        predict_photos(classifier, photos, progress=False)
        times.append(time.perf_counter() - start)
    return len(photos) / float(np.median(times))


def start_server(run: Path, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "catsdogs", "serve", str(run), "--port", "0", "--max-batch", str(max_batch),
               "--max-wait-ms", str(max_wait_ms), "--max-queue", "4096"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    for line in process.stderr:
        match = re.search(r"^open http://[\d.]+:(\d+)/", line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            port = int(match.group(1))
            break
    else:
        raise SystemExit(f"the server did not start: {' '.join(command)}")
    while True:  # until it answers
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)


def load(port: int, bodies: list[bytes], clients: int, requests: int) -> tuple[float, float, float]:
    """Photos/s, p50 and p99 latency (ms) of `requests` one-photo requests from `clients` threads."""
    counter = itertools.count()
    latencies: list[float] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (index := next(counter)) < requests:
            before = time.perf_counter()
            connection.request("POST", "/predict", bodies[index % len(bodies)], {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"the server answered {response.status}")
            latencies.append(time.perf_counter() - before)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = 1000 * np.asarray(latencies)
    return requests / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="a folder of photos (searched)")
    parser.add_argument("--count", type=int, default=256, help="photos taken from it")
    parser.add_argument("--requests", type=int, default=320, help="requests per cell")
    parser.add_argument("--settings", default="1/0,32/5", help="server settings MAX_BATCH/MAX_WAIT_MS, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes of the offline reference")
    args = parser.parse_args()
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    found = collect_photos([args.photos])
    photos = found[:: max(1, len(found) // args.count)][:args.count]  # spread over the classes
    served = load_served(args.run)
    bodies = [photo.read_bytes() for photo in photos]
    print(f"python benchmarks/bench_serve.py {shlex.join(sys.argv[1:])}")
    print(f"{platform.processor() or platform.machine()}, {usable_cpus()} CPUs, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, nice {os.nice(0)}")
    print(f"model: {served.info['served_from']} ({served.info['engine']}); "
          f"{len(photos)} photos of {args.photos}")
    offline = offline_photos_per_second(served.classifier, photos, args.repeat)
    print(f"\ncatsdogs predict (offline, batches of 128): {offline:.0f} photos/s\n")
    print("| batching (max batch / max wait) | clients | photos/s | of offline | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for setting in args.settings.split(","):
        max_batch, max_wait = int(setting.split("/")[0]), float(setting.split("/")[1])
        process, port = start_server(args.run, max_batch, max_wait)
        try:
            load(port, bodies, 8, min(64, args.requests))  # warm-up
            for clients in CLIENTS:
                rate, p50, p99 = load(port, bodies, clients, args.requests)
                shown = "off" if max_batch == 1 else f"{max_batch} / {max_wait:g} ms"
                print(f"| {shown} | {clients} | {rate:.0f} | {100 * rate / offline:.0f}% | {p50:.1f} | {p99:.1f} |",
                      flush=True)
        finally:
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()

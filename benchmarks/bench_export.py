"""Images/s of a run's model in each engine an app might use, with each one's accuracy on the same photos.

    python benchmarks/bench_export.py runs/cnn3 runs/cpu-fast --seconds 10

For each run (cnn3 at 224 px and bncnn-s at 128 px are the recipes' sizes) it exports the best
checkpoint to TorchScript, ONNX and ONNX int8 (each verified by `catsdogs export`'s own check),
then times, at batch 1 and batch 64 on the CPU (images/s from the median time of a call):

- PyTorch eager in fp32, and with bf16 autocast (what `predict` uses where the CPU has bf16);
- TorchScript (torch.jit.load);
- onnxruntime fp32 and int8.

Every engine gets the same decoded test photos as uint8 [N, H, W, 3] (decoding and resizing
are not timed), runs with its default threads (all cores), and is called for --seconds per cell
after a warm-up. The accuracy column is each engine's on the run's test photos (at most
--photos of them). The last lines give int8's speed-up over eager fp32 at batch 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from catsdogs.inference.export import export_run
from catsdogs.inference.exported import load_exported
from catsdogs.inference.predict import TrainedModel, load_trained
from catsdogs.inference.verify import run_batches, verification_photos
from catsdogs.training.hardware import FP32, Precision, cpu_has_bf16

Engine = Callable[[np.ndarray], np.ndarray]


def eager(trained: TrainedModel, precision: Precision) -> Engine:
    model = dataclasses.replace(trained, precision=precision)
    return lambda batch: model.probabilities(torch.from_numpy(batch)).numpy()


def images_per_second(engine: Engine, images: np.ndarray, batch: int, seconds: float) -> float:
    """`batch` over the median time of one call, calls repeated for `seconds` after three warm-up calls.

    The median, not the total: on a machine shared with other work, a call that waited for the
    CPU says nothing about the engine.
    """
    rng = np.random.default_rng(0)
    batches = [images[rng.integers(0, len(images), batch)] for _ in range(8)]
    for warm in batches[:3]:
        engine(warm)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        before = time.perf_counter()
        engine(batches[len(times) % len(batches)])
        times.append(time.perf_counter() - before)
    return batch / float(np.median(times))


def bench_run(run: Path, work: Path, photos: int, seconds: float) -> list[dict]:
    trained = dataclasses.replace(load_trained(run, device="cpu"), precision=FP32)
    test = verification_photos(trained, verify_on=None, limit=photos)
    quiet = lambda line: None  # noqa: E731
    files = {fmt: export_run(run, fmt=fmt, out=work / f"{run.name}.{fmt}", log=quiet).path
             for fmt in ("torchscript", "onnx")}
    files["int8"] = export_run(run, fmt="onnx", quantize="int8", out=work / f"{run.name}.int8.onnx",
                               log=quiet).path
    bf16 = Precision("bf16", torch.bfloat16, False, "bf16 autocast")
    engines = {"PyTorch eager fp32": eager(trained, FP32),
               "PyTorch eager bf16 autocast" + ("" if cpu_has_bf16() else " (no native bf16)"): eager(trained, bf16),
               "TorchScript": load_exported(files["torchscript"]).run,
               "onnxruntime fp32": load_exported(files["onnx"]).run,
               "onnxruntime int8": load_exported(files["int8"]).run}
    rows = []
    for name, engine in engines.items():
        probs = run_batches(engine, test.images)
        accuracy = float((probs.argmax(1) == test.labels).mean())
        rates = [images_per_second(engine, test.images, batch, seconds) for batch in (1, 64)]
        rows.append({"model": f"{trained.cfg.model} {trained.cfg.image_size}px", "engine": name, "b1": rates[0],
                     "b64": rates[1], "accuracy": accuracy, "photos": len(test.images)})
        print(f"  {rows[-1]['model']:<16} {name:<40} {rates[0]:>8.0f} {rates[1]:>8.0f}  {accuracy:.4f}",
              file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (cnn3 at 224 px, cpu-fast's bncnn-s at 128)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per engine and batch size")
    parser.add_argument("--photos", type=int, default=1000, help="test photos for the accuracy, at most")
    args = parser.parse_args()
    print(f"command: python benchmarks/bench_export.py {shlex.join(sys.argv[1:])}")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, torch "
          f"{torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; load average {load} at the start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
        for run in args.runs:
            rows += bench_run(run, Path(work), args.photos, args.seconds)
    print(f"load average {', '.join(f'{value:.1f}' for value in os.getloadavg())} at the end")
    print()
    print("| model | engine | images/s, batch 1 | images/s, batch 64 | test accuracy |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['engine']} | {row['b1']:.0f} | {row['b64']:.0f} | {row['accuracy']:.4f} "
              f"({row['photos']} photos) |")
    print()
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = {row["engine"]: row for row in rows if row["model"] == model}
        base, int8 = mine["PyTorch eager fp32"], mine["onnxruntime int8"]
        print(f"{model}: onnxruntime int8 is {int8['b1'] / base['b1']:.2f}x PyTorch eager fp32 at batch 1 "
              f"({int8['b64'] / base['b64']:.2f}x at batch 64), accuracy "
              f"{100 * (int8['accuracy'] - base['accuracy']):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a `catsdogs compare` study costs at another size, worked out from measured per-run times.

    python benchmarks/study_sizing.py docs/studies/petimages-large/summary.json \\
        --image-size 224 --photos 25000 --seeds 10 --slots 1 8 64

A finished study's summary.json says how many epochs each of its runs took: every sweep run of
the learning-rate grid and every study run. This script measures, on this machine's device
(`--device auto`: a GPU where there is one), what an epoch of each optimizer costs at the target
image size: it trains cnn3 with the study's own settings (batch size, chosen rate, precision) for a
few epochs on generated noise photos with the study's val/train share, and takes the median epoch after
the first, per training photo. It then prices the same runs on `--photos` photos split at the
tutorial's ratios, with `--seeds` seeds (a seed beyond the study's repeats an observed seed's
epochs), and schedules them as `compare` does: the sweep first, then the study runs in seed order,
each run on the next free slot (a GPU, or `--threads` CPU cores). It prints the device-hours and
the wall time on each number of slots.

It assumes the runs need as many epochs at the target size as they did in the study; the photos
are read from the decoded cache, as `compare`'s runs read them.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catsdogs.data.split import DEFAULT_RATIOS
from catsdogs.process import configure_process
from catsdogs.training.config import TrainConfig
from catsdogs.training.runs import read_history
from catsdogs.training.train import train

TRAIN_SHARE, VAL_SHARE, _ = DEFAULT_RATIOS  # `catsdogs split`'s (the tutorial's)


@dataclass(frozen=True)
class Run:
    phase: str  # "sweep" or "study"
    optim: str
    epochs: int


def study_runs(summary: dict, seeds: int) -> list[Run]:
    """The study's runs in `compare`'s order: its sweep runs, then `seeds` seeds of every optimizer."""
    runs = [Run("sweep", row["optim"], int(row["epochs"])) for row in summary.get("sweep", {}).get("rows", [])]
    observed: dict[str, list[int]] = {}
    for row in summary["runs"]:
        observed.setdefault(row["optim"], []).append(int(row["epochs"]))
    for index in range(seeds):
        runs.extend(Run("study", optim, observed[optim][index % len(observed[optim])]) for optim in summary["optims"])
    return runs


def wall_seconds(durations: list[list[float]], slots: int) -> float:
    """Phases one after another; within one, each run starts on the next free slot, in order."""
    total = 0.0
    for phase in durations:
        free = [0.0] * slots
        for seconds in phase:
            heapq.heappush(free, heapq.heappop(free) + seconds)
        total += max(free)
    return total


def write_photos(root: Path, train_images: int, size: int) -> Path:
    """Noise photos whose class says nothing about them, val photos at the split's share of train's. A model
    cannot learn them in a few epochs, as it cannot real photos: on photos it learns at once (cats red, dogs
    blue) the loss reaches zero within three epochs and the tiny gradients slow the CPU's arithmetic."""
    rng = np.random.default_rng(0)
    per_class = max(1, train_images // 2)
    for split, count in (("train", per_class), ("val", max(1, round(per_class * VAL_SHARE / TRAIN_SHARE))),
                         ("test", 1)):
        for name in ("Cat", "Dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def epoch_seconds_per_photo(summary: dict, data: Path, train_images: int, args: argparse.Namespace,
                            work: Path) -> dict[str, float]:
    """Each optimizer's median epoch after the first, in seconds per training photo (validation included)."""
    shared = summary["shared_settings"]
    rates = {}
    for optim in summary["optims"]:
        chosen = summary["hyperparameters"][optim]
        cfg = TrainConfig(data=str(data), model=shared["model"], optim=optim, lr=chosen["lr"],
                          batch_size=chosen["batch_size"], image_size=args.image_size, epochs=args.epochs,
                          precision=args.precision or shared["precision"], device=args.device,
                          augment=shared["augment"], out=str(work / optim))
        result = train(cfg, progress=False, log=lambda line: None)
        seconds = read_history(result.run_dir)["seconds"][1:]
        rates[optim] = statistics.median(seconds) / train_images
    return rates


def device_name(device: str, threads: int) -> str:
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.backends.cpu.get_cpu_capability()}), {threads} thread(s) a run"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="a finished study's summary.json")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--photos", type=int, default=25000, help="photos in the download before the split")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 8, 64], help="runs at once: GPUs, or CPU slots")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads a run (a slot's cores)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default=None, help="default: the study's")
    parser.add_argument("--sample", type=int, default=900, help="generated training photos to time on")
    parser.add_argument("--epochs", type=int, default=3, help="epochs each timing run trains (the first is not timed)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    if min(args.seeds, args.photos, args.sample, args.threads, *args.slots) < 1:
        parser.error("--seeds, --photos, --sample, --threads and --slots must be 1 or more")
    return args


def read_summary(path: Path) -> dict:
    """A finished study's summary, or exit saying why it will not do."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        sys.exit(f"Error: cannot read {path} ({error}): give the summary.json of a finished `catsdogs compare` study")
    missing = [optim for optim in summary.get("optims", [])
               if not any(row["optim"] == optim for row in summary.get("runs", []))]
    if not summary.get("optims") or missing:
        sys.exit(f"Error: {path} has no finished runs of {', '.join(missing) or 'any optimizer'}: give the "
                 "summary.json of a finished `catsdogs compare` study")
    return summary


def print_sizing(args: argparse.Namespace, summary: dict, rates: dict[str, float], sampled: int) -> None:
    train_images = round(args.photos * TRAIN_SHARE)
    runs = study_runs(summary, args.seeds)
    durations = [[run.epochs * rates[run.optim] * train_images for run in runs if run.phase == phase]
                 for phase in ("sweep", "study")]
    total = sum(map(sum, durations))
    print(f"device: {device_name(args.device, args.threads)}; torch {torch.__version__}")
    print(f"study: {args.summary} ({summary['shared_settings']['model']}), priced at {args.image_size} px on "
          f"{train_images} training photos ({args.photos} photos at the split's {TRAIN_SHARE:.0%}), "
          f"{args.seeds} seeds")
    for optim, rate in rates.items():
        epochs = [run.epochs for run in runs if run.optim == optim]
        print(f"  {optim}: {rate * train_images:.1f} s an epoch (measured on {sampled} noise photos), "
              f"{sum(epochs)} epochs over its {len(epochs)} runs")
    print(f"runs: {len(durations[0])} sweep, {len(durations[1])} study; {total / 3600:.2f} device-hours in all")
    print("| slots | device-hours | wall time (h) |")
    print("|---:|---:|---:|")
    for slots in args.slots:
        print(f"| {slots} | {total / 3600:.2f} | {wall_seconds(durations, slots) / 3600:.2f} |")


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process)
    args = parse_arguments()
    summary = read_summary(args.summary)
    torch.set_num_threads(args.threads)  # a study's run computes with its slot's threads
    with tempfile.TemporaryDirectory(prefix="study-sizing-") as folder:
        data = write_photos(Path(folder) / "data", args.sample, args.image_size)
        sampled = 2 * max(1, args.sample // 2)
        rates = epoch_seconds_per_photo(summary, data, sampled, args, Path(folder) / "runs")
    print_sizing(args, summary, rates, sampled)
    return 0


if __name__ == "__main__":
    sys.exit(main())

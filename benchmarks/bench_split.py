"""Time `catsdogs split` against the tutorial's copy_images split on the same folder, in one run.

    python benchmarks/bench_split.py [--data ../shared/data/PetImages-dev] [--repeat 5]

The tutorial listed the images with imutils (unshuffled), sliced the list into test, val and
train, and for each file read it with cv2 and copied it into SPLIT/LABEL/. split_dataset does
more work per file (a full PIL decode, EXIF rotation, RGB conversion and a SHA-256) in
parallel processes, then hard-links (or copies) the files into place. Creating thousands of
small files dominates both copying approaches, so the copy times follow the disk more than
the code; the runs are interleaved and synced to keep that fair.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
from imutils import paths

from catsdogs.cpus import usable_cpus
from catsdogs.data.split import DEFAULT_RATIOS, split_dataset
from catsdogs.process import configure_process

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "PetImages-dev"


def copy_images(image_paths: list[str], folder: str) -> None:
    """The tutorial's copy step: read each image (skipping unreadable ones), copy it to folder/label/."""
    for path in image_paths:
        if cv2.imread(path) is None:
            continue
        label = path.split(os.path.sep)[-2]
        label_folder = os.path.join(folder, label)
        os.makedirs(label_folder, exist_ok=True)
        shutil.copy2(path, os.path.join(label_folder, path.split(os.path.sep)[-1]))


def tutorial_split(data: Path, out: Path) -> None:
    """The tutorial's split: an unshuffled list, sliced (so its test set was mostly one class)."""
    image_paths = list(paths.list_images(str(data)))
    n_test = int(len(image_paths) * DEFAULT_RATIOS[2])
    n_val = int(len(image_paths) * DEFAULT_RATIOS[1])
    copy_images(image_paths[:n_test], str(out / "test"))
    copy_images(image_paths[n_test:n_test + n_val], str(out / "val"))
    copy_images(image_paths[n_test + n_val:], str(out / "train"))


def time_runs(runs: dict[str, Callable[[Path], object]], repeat: int, scratch: Path) -> dict[str, float]:
    """Median wall time of each run(out), each into a fresh folder, interleaved so drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for attempt in range(repeat):
        for name, run in runs.items():
            out = scratch / f"{name}-{attempt}"
            os.sync()  # so the previous run's writes and deletes are not flushed during this one
            start = time.perf_counter()
            run(out)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a PetImages-style folder (Cat/, Dog/)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per approach; the median is reported")
    args = parser.parse_args()
    data = args.data.resolve()
    if not data.is_dir():
        parser.error(f"--data {data} is not a folder: pass a folder of class subfolders, e.g. --data PetImages "
                     "(the default is the development machine's ../shared/data/PetImages-dev)")
    files = sorted(str(path) for path in data.rglob("*") if path.is_file())
    for path in files:  # warm the page cache, so neither approach pays for the first read
        Path(path).read_bytes()
    jobs = usable_cpus()
    # Scratch beside the data's file system is not guaranteed; split reports any copy fallback.
    runs = {
        "tutorial": lambda out: tutorial_split(data, out),
        "link": lambda out: split_dataset(data, out, mode="link", jobs=jobs, progress=False),
        "copy": lambda out: split_dataset(data, out, mode="copy", jobs=jobs, progress=False),
    }
    # In the system temp folder: if that is another file system, split reports the copy fallback.
    with tempfile.TemporaryDirectory(prefix="bench-split-") as scratch:
        results = time_runs(runs, args.repeat, Path(scratch))
        summary = split_dataset(data, Path(scratch) / "last", jobs=jobs, progress=False)
    tutorial = results.pop("tutorial")
    print(f"data: {data} ({len(files)} files), {jobs} CPU cores, median of {args.repeat} runs each")
    print(f"tutorial copy_images (cv2.imread + shutil.copy2, 1 process, no checks): {tutorial:7.3f} s")
    for mode, seconds in results.items():
        print(f"catsdogs split_dataset --mode {mode:<4} (full decode + sha256, {jobs} processes): "
              f"{seconds:7.3f} s  ({tutorial / seconds:.2f}x the tutorial's speed)")
    print(f"split kept {summary.kept} photos, left out {summary.found - summary.kept}; "
          f"hard links fell back to copies for {summary.copied}")


if __name__ == "__main__":
    main()

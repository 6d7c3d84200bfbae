"""Recipes against the tutorial's CNN: test accuracy, wall time and images/s on one split.

    catsdogs split ../shared/data/PetImages-large --out data-large --ratios 0.9,0.05,0.05
    python benchmarks/bench_recipes.py --data data-large --runs cnn3 cpu-fast
    python benchmarks/bench_recipes.py --data data-large --runs gpu --device cpu   # a recipe elsewhere

Each entry trains into a fresh folder and is evaluated on the split's test photos, which no
run ever sees during training; the script prints one markdown row per entry as it finishes.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from catsdogs.inference.evaluate import evaluate_run
from catsdogs.process import configure_process
from catsdogs.training.checkpoint import CONFIG, global_step
from catsdogs.training.config import build_config
from catsdogs.training.runs import RunFolder
from catsdogs.training.train import train

ROOT = Path(__file__).resolve().parents[1]
# The tutorial's CNN at the size and length the issue measured it (128 px, 12 epochs, Adam).
BASELINES = {"cnn3": {"optim": "adam", "model": "cnn3", "image_size": 128, "epochs": 12}}


def describe(name: str) -> tuple[Path | None, dict]:
    if name in BASELINES:
        return None, dict(BASELINES[name])
    recipe = ROOT / "configs" / "recipes" / f"{name}.yaml"
    if not recipe.is_file():
        raise SystemExit(f"unknown entry {name}: use cnn3 or a file name from configs/recipes/")
    return recipe, {}


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", default=["cnn3", "cpu-fast"])
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders here instead of a temp dir")
    parser.add_argument("--tta", action="store_true", help="also report test accuracy with flip TTA")
    parser.add_argument("--device", default=None,
                        help="run every entry on this device instead of the recipe's (cpu runs gpu.yaml here)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"{args.data} is not a split folder: run `catsdogs split` first", file=sys.stderr)
        return 1
    counts = {s: sum(1 for p in (args.data / s).rglob("*") if p.is_file()) for s in ("train", "val", "test")}
    print(f"data {args.data}: {counts['train']} train / {counts['val']} val / {counts['test']} test photos")
    print("| run | model | px | epochs | training min | train img/s | test accuracy |" +
          (" with TTA |" if args.tta else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.tta else ""))
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    try:
        for name in args.runs:
            recipe, flags = describe(name)
            flags.update(data=str(args.data), out=str(work / name))
            if args.device:
                flags["device"] = args.device
            cfg = build_config(recipe, flags)
            start = time.perf_counter()
            result = train(cfg, progress=False, log=lambda line: None)
            wall = time.perf_counter() - start
            folder = RunFolder(result.run_dir)
            with folder.history_path.open(encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle))
            seconds = sum(float(r["seconds"]) for r in rows)
            accuracy = evaluate_run(result.run_dir, progress=False).metrics["accuracy"]
            last = folder.load("last")
            steps, batch_size = global_step(last), last[CONFIG]["batch_size"]
            images = min(steps * batch_size, counts["train"] * len(rows))  # the last batch may be short
            label = name if args.device is None else f"{name} on {args.device}"
            line = (f"| {label} | {cfg.model} | {cfg.image_size} | {len(rows)} | {seconds / 60:.1f} "
                    f"(wall {wall / 60:.1f}) | {images / seconds:.0f} | {accuracy:.4f} |")
            if args.tta:
                line += f" {evaluate_run(result.run_dir, progress=False, tta=True).metrics['accuracy']:.4f} |"
            print(line, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

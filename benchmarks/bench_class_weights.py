"""Unbalanced photos with and without --class-weights balanced: what each run finds of the rare class.

    python benchmarks/bench_class_weights.py                      # 900 dogs, 150 cats of PetImages-dev
    python benchmarks/bench_class_weights.py --minutes 2 --image-size 96

It builds an unbalanced folder from ../shared/data/PetImages-dev (the first photos of each
class, linked or copied into a temporary folder), splits it 0.7/0.1/0.2, trains
configs/recipes/cpu-fast.yaml for the same minutes with each setting, and evaluates each run's
best.pt on the test photos. Time-budgeted runs are not repeatable to the digit: the machine's
speed decides the number of steps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from catsdogs.data.split import split_dataset
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.process import configure_process
from catsdogs.training.config import build_config
from catsdogs.training.train import train

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "PetImages-dev"


def unbalanced_folder(source: Path, counts: dict[str, int], out: Path) -> Path:
    for name, count in counts.items():
        (out / name).mkdir(parents=True)
        for photo in sorted((source / name).iterdir())[:count]:
            try:
                os.link(photo, out / name / photo.name)
            except OSError:
                shutil.copy2(photo, out / name / photo.name)
    return out


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--dogs", type=int, default=900)
    parser.add_argument("--cats", type=int, default=150)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    if not (args.source / "Cat").is_dir():
        print(f"{args.source} has no Cat/ and Dog/ folders (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-class-weights-"))
    try:
        photos = unbalanced_folder(args.source, {"Dog": args.dogs, "Cat": args.cats}, work / "photos")
        data = work / "data"
        split_dataset(photos, data, ratios=(0.7, 0.1, 0.2), progress=False)
        recipe = ROOT / "configs" / "recipes" / "cpu-fast.yaml"
        print(f"{args.dogs} Dog / {args.cats} Cat photos of {args.source}, split 0.7/0.1/0.2; {recipe.name} at "
              f"{args.image_size}px for {args.minutes:g} min")
        print("| class weights | test accuracy | balanced accuracy | Cat recall | Dog recall | ROC AUC |")
        print("|---|---|---|---|---|---|")
        for scheme in ("none", "balanced"):
            # At this benchmark's own (small) image size the recipe's progressive resizing is off.
            cfg = build_config(recipe, {"data": str(data), "out": str(work / "runs" / scheme), "class_weights": scheme,
                                        "image_size": args.image_size, "progressive_size": 0,
                                        "time_budget": args.minutes})
            run = train(cfg, progress=False, log=lambda line: None).run_dir
            m = evaluate_run(run, progress=False).metrics
            recall = {name: m["per_class"][name]["recall"] for name in ("Cat", "Dog")}
            print(f"| {scheme} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {recall['Cat']:.4f} | "
                  f"{recall['Dog']:.4f} | {m['roc_auc']:.3f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

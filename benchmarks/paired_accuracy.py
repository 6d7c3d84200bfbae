"""Two trained runs on the same photos: each one's accuracy, and whether the gap is real.

    python benchmarks/paired_accuracy.py RUN_A RUN_B --data FOLDER [--tta] [--checkpoint last]

FOLDER is a split folder (its test photos are used) or a folder of class subfolders (all its
photos). Both runs' best checkpoints (or last, as the compute frontier measures its runs) are
evaluated with `evaluate_run`, which writes their usual files (into
RUN/eval-<folder name>/ for photos other than their own split); then the photos one run got
right and the other wrong are counted, and an exact McNemar test says how likely a gap that
large is between two equally good models.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from catsdogs.errors import CatsdogsError
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.process import configure_process
from catsdogs.study.stats import mcnemar_exact_p


def correct_by_photo(predictions: Path) -> dict[str, bool]:
    with predictions.open(newline="") as handle:
        return {row["path"]: row["label"] == row["predicted"] for row in csv.DictReader(handle)}


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--data", required=True, help="split folder, or a folder of class subfolders")
    parser.add_argument("--tta", action="store_true", help="evaluate with flip test-time augmentation")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best", help="of both runs")
    args = parser.parse_args()
    try:
        results = [evaluate_run(run, data=args.data, checkpoint=args.checkpoint, tta=args.tta, progress=False)
                   for run in (args.run_a, args.run_b)]
    except CatsdogsError as exc:  # a missing run or folder: one line, as the commands say it
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    a, b = (correct_by_photo(result.predictions_path) for result in results)
    if a.keys() != b.keys():
        print("the two evaluations did not read the same photos (unreadable files differ?)", file=sys.stderr)
        return 1
    only_a = sum(a[p] and not b[p] for p in a)
    only_b = sum(b[p] and not a[p] for p in a)
    print(f"{len(a)} photos in {args.data}" + (" (flip TTA)" if args.tta else "")
          + (f", {args.checkpoint} checkpoints" if args.checkpoint != "best" else ""))
    print("| run | correct | accuracy |")
    print("|---|---|---|")
    for run, correct in ((args.run_a, a), (args.run_b, b)):
        print(f"| {run} | {sum(correct.values())} | {sum(correct.values()) / len(correct):.4f} |")
    print(f"right only by {args.run_a.name}: {only_a}; right only by {args.run_b.name}: {only_b}; "
          f"exact McNemar p = {mcnemar_exact_p(only_a, only_b):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

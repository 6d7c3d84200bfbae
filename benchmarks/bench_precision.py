"""Does bf16 cost accuracy? The same config trained in fp32 and in bf16, several seeds each.

    python benchmarks/bench_precision.py --data data --seeds 3 --epochs 10 --image-size 128

Prints, per precision, the test accuracy of each seed's best checkpoint, their mean and
sample standard deviation, the training images/s, and the difference of the means with a
paired t-test over the seeds (a seed gives both precisions the same start).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from catsdogs.inference.evaluate import evaluate_run
from catsdogs.process import configure_process
from catsdogs.study.stats import paired_t_test
from catsdogs.training.config import TrainConfig
from catsdogs.training.hardware import cpu_has_bf16
from catsdogs.training.runs import RunFolder
from catsdogs.training.train import train


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--optim", default="adam")
    parser.add_argument("--model", default="cnn3")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"{args.data} is not a split folder: run `catsdogs split` first", file=sys.stderr)
        return 1
    if not cpu_has_bf16():
        print("this CPU has no native bf16: nothing to compare", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    print(f"data {args.data}, {args.model} at {args.image_size}px, {args.optim}, {args.epochs} epochs, "
          f"seeds 1..{args.seeds}; test accuracy of best.pt")
    results: dict[str, list[float]] = {}
    try:
        for precision in ("fp32", "bf16"):
            accuracies, rates = [], []
            for seed in range(1, args.seeds + 1):
                cfg = TrainConfig(data=str(args.data), optim=args.optim, model=args.model, epochs=args.epochs,
                                  image_size=args.image_size, seed=seed, precision=precision,
                                  out=str(work / f"{precision}-{seed}"))
                start = time.perf_counter()
                run = train(cfg, progress=False, log=lambda line: None).run_dir
                with RunFolder(run).history_path.open(encoding="utf-8", newline="") as handle:
                    seconds = sum(float(row["seconds"]) for row in csv.DictReader(handle))
                images = sum(1 for p in (args.data / "train").rglob("*") if p.is_file()) * args.epochs
                rates.append(images / seconds)
                accuracies.append(evaluate_run(run, progress=False).metrics["accuracy"])
                print(f"  {precision} seed {seed}: test accuracy {accuracies[-1]:.4f}  "
                      f"({time.perf_counter() - start:.0f} s, {rates[-1]:.0f} img/s incl. validation)")
            results[precision] = accuracies
            sd = f"{statistics.stdev(accuracies):.4f}" if len(accuracies) > 1 else "-"
            print(f"{precision}: mean {statistics.mean(accuracies):.4f}  sd {sd}  {statistics.mean(rates):.0f} img/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    difference = statistics.mean(results["bf16"]) - statistics.mean(results["fp32"])
    # A seed gives both precisions the same initial weights and batches: compare them pair by pair,
    # as `catsdogs compare` does (sample standard deviations, paired t-test).
    test = paired_t_test(results["bf16"], results["fp32"])
    if test is None:
        print(f"bf16 - fp32 = {difference:+.4f} (one seed: no spread to compare it with)")
    else:
        low, high = test.ci95
        verdict = ("a difference the seeds show" if test.distinguishable(0.05) else
                   test.cannot_tell or "these seeds cannot tell them apart")
        p = "none" if test.p is None else f"{test.p:.2f}"
        print(f"bf16 - fp32 = {difference:+.4f}; paired by seed: 95% interval {low:+.4f} to {high:+.4f}, "
              f"p = {p}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

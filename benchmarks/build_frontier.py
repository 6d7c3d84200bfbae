"""Build the compute frontier that `configs/recipes/auto.yaml` chooses from (catsdogs/training/frontier.json).

    python benchmarks/build_frontier.py --budgets 12 40 --seeds 2 --jobs 2

For each budget of training TFLOPs and each candidate (a model and its progressive image sizes), it
trains auto.yaml's recipe for the whole number of epochs that the budget buys on the training photos,
with no time limit (`--time-budget 0`), in fp32 (or `--precision bf16`, recorded with each point) at
`--threads` per run: the result depends on FLOPs, not on this machine's speed. Each run is measured at
its last epoch on the photos the split held back from training (its val and test splits together, 938
photos of PetImages-large); the time-to-accuracy benchmark's test photos (PetImages-dev) are never used.
Runs that finished earlier are kept, so the command resumes, and budgets measured by earlier commands stay
in the file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench_time_to_accuracy import SHARED, catsdogs, make_split
from catsdogs.atomic import write_text_atomic
from catsdogs.inference.evaluate import evaluate_run, results_suffix
from catsdogs.training.frontier import FRONTIER_FILE, candidate_gflop
from catsdogs.training.models import build_model, count_flops
from catsdogs.training.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "recipes" / "auto.yaml"
# name: (model, image size, progressive size, fraction of the steps at it)
CANDIDATES = {
    "s64": ("bncnn-s", 64, 48, 0.75),
    "s96": ("bncnn-s", 96, 64, 0.75),  # cpu-quick
    "s128": ("bncnn-s", 128, 96, 0.75),  # cpu-fast
    "m128": ("bncnn-m", 128, 96, 0.75),  # cpu-best
}
# A candidate with a trick of the fast small-image recipes (catsdogs/training/tricks.py): the candidate it
# changes, and the settings it adds. auto chooses one only where the frontier shows it helps.
TRICKS = {
    "s64-bn": ("s64", {"bn_momentum": 0.4, "bn_bias_lr_scale": 64.0}),  # airbench's BN momentum and bias lr
    "s64-bn8": ("s64", {"bn_momentum": 0.4, "bn_bias_lr_scale": 8.0}),
    "s64-wh": ("s64", {"whiten_stem": True}),  # a patch-whitened first layer
    "s64-b256": ("s64", {"batch_size": 256, "lr_batch": 64}),  # 4x the batch, lr scaled linearly
    "s96-wh": ("s96", {"whiten_stem": True}),
    # TrivialAugment instead of crops: more regularisation where a long schedule fits the training photos
    # (training accuracy 100% after an hour of m128 on an AMX CPU)
    "s128-ta": ("s128", {"augment": "trivialaugment"}),
    "m128-ta": ("m128", {"augment": "trivialaugment"}),
}
BUDGETS = [12, 40, 130, 400, 1300]  # TFLOP: from 2 minutes of an AVX2 laptop to an hour of an AMX server
HELD_BACK = ("val", "test")
EVALUATING = threading.Lock()


@functools.cache  # a trick trains its base's steps: counted once
def train_gflop(model: str, size: int, low: int, fraction: float) -> float:
    forward = {s: count_flops(build_model(model, 2, s), s) / 1e9 for s in (size, low)}
    return candidate_gflop(forward, size, low, fraction)


def spec(name: str) -> tuple[tuple, dict]:
    """A candidate's (model, image size, progressive size, fraction), and the settings its trick adds."""
    base, extra = TRICKS.get(name, (name, {}))
    return CANDIDATES[base], extra


def candidate_config(name: str, work: Path, precision: str = "fp32") -> Path:
    """auto.yaml's shared settings with the candidate's model, sizes and trick, and no frontier or time budget."""
    settings = yaml.safe_load(BASE.read_text(encoding="utf-8"))
    (model, size, low, fraction), extra = spec(name)
    settings.update(frontier=False, time_budget=0, model=model, image_size=size, progressive_size=low,
                    progressive_fraction=fraction, precision=precision, **extra)
    path = work / "configs" / f"{name}{tag(precision)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def held_back_accuracy(run: Path, split: Path) -> float:
    """Accuracy of the run's last checkpoint on the split's val and test photos together (evaluate's files in
    RUN/eval-val and RUN/eval-test; in this process, one run at a time: figures are drawn with pyplot). A part
    measured after last.pt was written is read back, not measured again: a resumed build measures a run once."""
    correct = images = 0
    for part in HELD_BACK:
        metrics = earlier_measure(run, part)
        if metrics is None:
            with EVALUATING:
                metrics = evaluate_run(run, split=part, checkpoint="last", data=str(split), device="cpu",
                                       progress=False, out_dir=run / f"eval-{part}").metrics
        correct += round(metrics["accuracy"] * metrics["images"])
        images += metrics["images"]
    return correct / images


def earlier_measure(run: Path, part: str) -> dict | None:
    """The metrics of an evaluation of the run's last.pt on `part` made since last.pt was last written; None if
    there is none (evaluate writes metrics.json last, so one that exists is whole)."""
    metrics_path = RunFolder(run / f"eval-{part}").result_files(results_suffix(part, "last", None, None))[0]
    last = RunFolder(run).last_path
    if not metrics_path.is_file() or metrics_path.stat().st_mtime_ns < last.stat().st_mtime_ns:
        return None
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    return metrics if Path(metrics.get("checkpoint", "")).name == last.name else None


def tag(precision: str) -> str:
    """What a name gains for a precision other than fp32, so that its configs and runs sit beside fp32's."""
    return "" if precision == "fp32" else f"-{precision}"


def train_one(job: dict, split: Path, work: Path, threads: int) -> float:
    run = work / "runs" / job["name"]
    folder = RunFolder(run)
    status = folder.read_status() if folder.status_path.is_file() else None
    if status is None or status.status != "finished":
        if folder.last_path.is_file():  # interrupted earlier: resume it
            command = ["train", "--resume", str(run)]
        else:
            config = candidate_config(job["candidate"], work, job["precision"])
            command = ["train", "--config", str(config), "--data", str(split),
                       "--epochs", str(job["epochs"]), "--seed", str(job["seed"]), "--out", str(run)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-m", "catsdogs", *command], check=True, stdout=subprocess.DEVNULL, env=env)
    return held_back_accuracy(run, split)


def plan(budgets: list[float], names: list[str], seeds: int, gflop: dict[str, float], train_images: int,
         precision: str = "fp32") -> list[dict]:
    jobs = []
    for budget in budgets:
        for name in names:
            epochs = max(1, round(budget * 1000 / (gflop[name] * train_images)))
            for seed in range(42, 42 + seeds):
                jobs.append({"name": f"{name}-{budget:g}{tag(precision)}-seed{seed}", "candidate": name,
                             "budget": budget, "epochs": epochs, "seed": seed, "precision": precision})
    return jobs


def write(out: Path, old: dict, gflop: dict[str, float], train_images: int, results: dict[tuple, list[float]],
          jobs: list[dict], seeds: int, command: str) -> None:
    points = {(p["candidate"], p["budget_tflop"]): p for p in old.get("points", [])}
    measured = {p["candidate"] for p in old.get("points", [])} | {job["candidate"] for job in jobs}
    for job in jobs:
        key = (job["candidate"], job["budget"])
        done = results.get(key, [])
        if len(done) == seeds:
            points[key] = {"candidate": job["candidate"], "budget_tflop": job["budget"], "epochs": job["epochs"],
                           "tflop": round(job["epochs"] * train_images * gflop[job["candidate"]] / 1000, 2),
                           "accuracy": [round(a, 5) for a in done],
                           **({"precision": job["precision"]} if job["precision"] != "fp32" else {})}
    commands = [c for c in old.get("commands", []) if c != command] + [command]
    data = {"format": 1, "commands": commands, "train_images": train_images,
            "photos": "a 90/5/5 split of PetImages-large (seed 42); accuracy on its 938 val and test photos, "
                      "at the last epoch, one number per seed",
            "precision": "fp32 unless a point names another", "base": "configs/recipes/auto.yaml",
            "candidates": {name: candidate_record(name, gflop) for name in [*CANDIDATES, *TRICKS]
                           if name in CANDIDATES or name in measured},
            "points": sorted(points.values(), key=lambda p: (p["budget_tflop"], p["candidate"]))}
    write_text_atomic(out, json.dumps(data, indent=1) + "\n")


def candidate_record(name: str, gflop: dict[str, float]) -> dict:
    (model, size, low, fraction), extra = spec(name)
    return {"model": model, "image_size": size, "progressive_size": low, "progressive_fraction": fraction,
            "train_gflop": round(gflop[name], 4), **({"extra": extra} if extra else {})}


def table(path: Path) -> str:
    """The frontier as a markdown table: a row per budget, a column per candidate (mean and seeds); then the
    candidates with a trick, each against the candidate it changes, at each budget both were measured (the
    candidate it changes read from the package's frontier where `path` lacks it)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    cands = data["candidates"]
    names = [n for n in cands if "extra" not in cands[n] and any(p["candidate"] == n for p in data["points"])]
    found = {(p["candidate"], p["budget_tflop"]): p for p in data["points"]}
    package = json.loads(FRONTIER_FILE.read_text(encoding="utf-8"))["points"] if FRONTIER_FILE.is_file() else []
    bases = {**{(p["candidate"], p["budget_tflop"]): p for p in package if p["candidate"] in CANDIDATES}, **found}

    def cell(p: dict) -> str:
        return (f"{mean(p):.1%} ({', '.join(f'{a:.1%}' for a in p['accuracy'])}; {p['epochs']} ep"
                + (f", {p['precision']}" if p.get("precision", "fp32") != "fp32" else "") + ")")

    lines = ["| budget TFLOP | " + " | ".join(f"{n} ({cands[n]['model']}, {cands[n]['progressive_size']}/"
                                                 f"{cands[n]['image_size']} px)" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for budget in sorted({b for n, b in found if n in names}):
        cells = ["" if (n, budget) not in found else cell(found[n, budget]) for n in names]
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    rows = [(n, b) for n in cands if "extra" in cands[n] for b in sorted({b for _, b in found})
            if (n, b) in found and (TRICKS[n][0], b) in bases]
    if rows:
        lines += ["", "| candidate | its settings | budget TFLOP | accuracy | without the trick | difference |",
                  "|---|---|---|---|---|---|"]
        for n, b in rows:
            settings = ", ".join(f"{k}: {v}" for k, v in cands[n]["extra"].items())
            base = bases[TRICKS[n][0], b]
            lines.append(f"| {n} | {settings} | {b:g} | {cell(found[n, b])} | {cell(base)} | "
                         f"{(mean(found[n, b]) - mean(base)) * 100:+.1f} points |")
    return "\n".join(lines if names else lines[3:])


def speed(names: list[str], threads: int, repeats: int = 3) -> None:
    """Print each candidate's training milliseconds an image as auto's probe measures them, `repeats` times."""
    import torch

    from catsdogs.training.auto import measure_candidate, run_probe
    from catsdogs.training.config import build_config
    from catsdogs.training.frontier import Candidate
    from catsdogs.training.hardware import select_precision

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    precision = select_precision("fp32", device)
    # auto.yaml's probe, on the 90/5/5 split that bench_time_to_accuracy.py trains on
    probe = run_probe(build_config(BASE, {"data": "unused"}), train_images=90, val_images=5)
    candidates = {}
    for name in names:
        (model, size, low, fraction), extra = spec(name)
        candidates[name] = Candidate(name, model, size, low, fraction, train_gflop(model, size, low, fraction), extra)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, candidate in candidates.items():
            times[name].append(measure_candidate(candidate, device, precision, probe) * 1000)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {threads} thread(s), fp32; ms an image:")
    for name, found in times.items():
        print(f"{name:<10} batch {candidates[name].extra.get('batch_size', probe.batch_size):4d}  "
              + "  ".join(f"{t:.2f}" for t in found) + f"  median {sorted(found)[len(found) // 2]:.2f}")


def mean(point: dict) -> float:
    return sum(point["accuracy"]) / len(point["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=Path, default=SHARED / "PetImages-large")
    parser.add_argument("--work", type=Path, default=Path("bench-frontier"))
    parser.add_argument("--budgets", type=float, nargs="+", default=BUDGETS[:2], help="training TFLOPs")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                        help=f"among {', '.join(CANDIDATES)}; with a trick: {', '.join(TRICKS)}")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="of the runs (bf16 needs a CPU with native bf16); recorded with each point")
    parser.add_argument("--out", type=Path, default=FRONTIER_FILE)
    parser.add_argument("--table", action="store_true", help="print --out as a markdown table and stop")
    parser.add_argument("--speed", nargs="+", metavar="CANDIDATE",
                        help="time these candidates as auto does (at --threads, in fp32, at their batch size), "
                             "three times each, alternating, and stop")
    args = parser.parse_args()
    if set(args.candidates) - set(CANDIDATES) - set(TRICKS):
        parser.error(f"--candidates: choose among {', '.join([*CANDIDATES, *TRICKS])}")
    if args.table:
        print(table(args.out))
        return
    if args.speed:
        if set(args.speed) - set(CANDIDATES) - set(TRICKS):
            parser.error(f"--speed: choose among {', '.join([*CANDIDATES, *TRICKS])}")
        speed(args.speed, args.threads)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    split = make_split(args.large, args.work)
    train_images = sum(1 for p in (split / "train").rglob("*") if p.is_file())
    gflop = {name: train_gflop(*spec(name)[0]) for name in [*CANDIDATES, *TRICKS]}
    jobs = plan(args.budgets, args.candidates, args.seeds, gflop, train_images, args.precision)
    old = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    command = (f"python benchmarks/build_frontier.py --budgets {' '.join(f'{b:g}' for b in args.budgets)} "
               + (f"--candidates {' '.join(args.candidates)} " if args.candidates != list(CANDIDATES) else "")
               + f"--seeds {args.seeds} --jobs {args.jobs} --threads {args.threads}"
               + (f" --precision {args.precision}" if args.precision != "fp32" else ""))
    results: dict[tuple, list[float]] = {}
    started = time.perf_counter()
    print(f"{len(jobs)} runs on {train_images} training photos; cpu {os.cpu_count()} cores", flush=True)
    pool = ThreadPoolExecutor(args.jobs)
    futures = [(job, pool.submit(train_one, job, split, args.work, args.threads)) for job in jobs]
    try:  # Ctrl-C reaches the runs too (one process group): they save, and the same command resumes them
        for job, future in futures:
            accuracy = future.result()
            results.setdefault((job["candidate"], job["budget"]), []).append(accuracy)
            print(f"{job['name']:<22} {job['epochs']:4d} epochs  held-back accuracy {accuracy:.4f}  "
                  f"[{(time.perf_counter() - started) / 60:.1f} min]", flush=True)
            write(args.out, old, gflop, train_images, results, jobs, args.seeds, command)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


if __name__ == "__main__":
    main()

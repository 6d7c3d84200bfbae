"""Time to accuracy: test accuracy on unseen photos after 2, 5, 10 and 20 minutes of training.

Run from the repository root (the photos are the project's shared data set, see docs/benchmarks.md):

    python benchmarks/bench_time_to_accuracy.py --recipes cpu-quick cpu-fast --budgets 2 5 10 20
    python benchmarks/bench_time_to_accuracy.py --recipes cpu-fast --precision fp32 bf16 --peers

Each recipe trains with `catsdogs train --config configs/recipes/NAME.yaml --time-budget MIN` on a
90/5/5 split of `--large` (the split is made once, into `--work`), and is measured as
`catsdogs evaluate RUN --data TEST` measures it (with and without `--tta`, in this process) on the
`--test` photos, which are disjoint from the training photos. `--peers` adds, on the same photos and
budgets:

- the tutorial's pipeline: its three-layer CNN at 224 px, Adam at 1e-3, torchvision's ImageFolder
  + Resize + RandomHorizontalFlip(0.25) + ToTensor through a DataLoader, float32, stopped when the
  budget is spent (its loss is cross-entropy on logits, the tutorial's one fix here);
- Ultralytics YOLO classify from scratch (`yolov8n-cls.yaml`, `pretrained=False`, 128 px,
  batch 64, its `time=` budget), installed into its own virtual environment in `--work`, never into
  catsdogs' one. Its `optimizer=auto` picks MuSGD for long plans, which runs at 3 img/s on 2 cores,
  so the optimizer is pinned to what auto picks for short runs (AdamW, lr0 0.001667).

A recipe is a name in configs/recipes/ or a path to a YAML file (a candidate recipe; its row is
named after the file). Prints a markdown table (one row per run, as it finishes) and writes `--out`
.csv and .png (accuracy against training minutes, one line per recipe or peer). Rows already in
`--out`.csv stay, and a rerun of the same tool, precision and budget replaces its row, so runs of
different budgets, made one at a time, add up to one table and one figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from catsdogs.inference.evaluate import evaluate_run
from catsdogs.training.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ULTRALYTICS = "ultralytics==8.4.190"
COLUMNS = ["tool", "version", "precision", "budget_min", "epochs", "train_s", "wall_s", "accuracy", "accuracy_tta",
           "val_accuracy", "cpu"]
NUMBERS = {"budget_min": float, "epochs": int, "train_s": float, "wall_s": float, "accuracy": float,
           "accuracy_tta": float, "val_accuracy": float}


def catsdogs(*args: str) -> None:
    """Run one catsdogs command as a user would, failing loudly."""
    subprocess.run([sys.executable, "-m", "catsdogs", *args], check=True, stdout=subprocess.DEVNULL)


def make_split(large: Path, work: Path) -> Path:
    split = work / "data-large"
    if not (split / "train").is_dir():
        catsdogs("split", str(large), "--out", str(split), "--ratios", "0.9,0.05,0.05", "--seed", "42")
    return split


def recipe_file(recipe: str) -> Path:
    """configs/recipes/NAME.yaml, or the YAML file a candidate recipe is in."""
    return Path(recipe) if recipe.endswith((".yaml", ".yml")) else ROOT / "configs" / "recipes" / f"{recipe}.yaml"


def finished(run: Path) -> bool:
    """A run folder whose training ended by itself (its epochs or its time budget), not by Ctrl-C."""
    status = RunFolder(run).read_status()
    return status is not None and status.status in ("finished", "time-budget")


def run_recipe(recipe: str, precision: str, budget: float, split: Path, test: Path, work: Path,
               keep: bool = False) -> dict:
    """Train one recipe for `budget` minutes (`keep`: unless --work holds its finished run) and measure it
    on the test photos."""
    config = recipe_file(recipe)
    recipe = config.stem
    run = work / "runs" / f"{recipe}-{precision}-{budget:g}m"
    wall = None
    if not (keep and finished(run)):
        if run.exists():
            subprocess.run(["rm", "-rf", str(run)], check=True)
        start = time.perf_counter()
        catsdogs("train", "--config", str(config), "--data", str(split),
                 "--time-budget", f"{budget:g}", "--precision", precision, "--out", str(run))
        wall = time.perf_counter() - start
    with RunFolder(run).history_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = {tta: evaluate_run(run, data=str(test), progress=False, tta=tta).metrics["accuracy"]
                for tta in (False, True)}
    status = RunFolder(run).read_status()
    import catsdogs as package

    train_s = sum(float(r["seconds"]) for r in rows)
    return {"tool": recipe, "version": f"catsdogs {package.__version__}", "precision": precision,
            "budget_min": budget, "epochs": len(rows), "train_s": train_s, "wall_s": wall or train_s,
            "accuracy": accuracy[False], "accuracy_tta": accuracy[True],
            "val_accuracy": status.best_val_acc}


def run_tutorial(budget: float, split: Path, test: Path) -> dict:
    """The tutorial's pipeline, stopped after `budget` minutes of training, measured on `test`."""
    import torch
    from bench_train import tutorial_loader
    from torch import nn

    from catsdogs.training.models import build_model

    torch.manual_seed(0)
    size, deadline = 224, time.perf_counter() + budget * 60
    model = build_model("cnn3", 2, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = tutorial_loader(split / "train", size, 64, True, workers=1)
    start, epochs, spent = time.perf_counter(), 0, False
    while not spent:
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            spent = time.perf_counter() >= deadline
            if spent:
                break
        epochs += 1
    train_s = time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in tutorial_loader(test, size, 100, False, workers=1):
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return {"tool": "tutorial (cnn3 224 px, Adam)", "version": f"torch {torch.__version__}", "precision": "fp32",
            "budget_min": budget, "epochs": epochs, "train_s": train_s, "wall_s": train_s,
            "accuracy": correct / total, "accuracy_tta": None}


ULTRALYTICS_DRIVER = """
import json, sys, time
from pathlib import Path
import ultralytics
from ultralytics import YOLO
split, test, project, minutes = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
start = time.perf_counter()
model = YOLO("yolov8n-cls.yaml")
model.train(data=split, epochs=1000, time=minutes / 60, imgsz=128, batch=64, workers=2, device="cpu",
            optimizer="AdamW", lr0=0.001667, pretrained=False, project=project, name="run", exist_ok=True,
            plots=False, seed=0, verbose=False)
train_s = time.perf_counter() - start
best = Path(project) / "run" / "weights" / "best.pt"
model = YOLO(str(best))
names = {v: k for k, v in model.names.items()}
correct = total = 0
for folder in sorted(p for p in test.iterdir() if p.is_dir()):
    paths = sorted(str(p) for p in folder.iterdir() if p.is_file())
    for result in model.predict(paths, imgsz=128, batch=64, verbose=False, stream=True, device="cpu"):
        correct += int(result.probs.top1 == names[folder.name])
        total += 1
epochs = sum(1 for _ in open(Path(project) / "run" / "results.csv")) - 1
print(json.dumps({"version": ultralytics.__version__, "epochs": epochs, "train_s": train_s,
                  "accuracy": correct / total}))
"""


def ultralytics_python(work: Path) -> Path:
    """A virtual environment of its own for Ultralytics, so catsdogs' packages stay as they are."""
    venv = work / "ultralytics-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", ULTRALYTICS], check=True)
    return python


def run_ultralytics(budget: float, split: Path, test: Path, work: Path) -> dict:
    python = ultralytics_python(work)
    driver = work / "ultralytics_driver.py"
    driver.write_text(ULTRALYTICS_DRIVER)
    project = work / "ultralytics" / f"{budget:g}m"
    env = dict(os.environ, YOLO_OFFLINE="1")
    start = time.perf_counter()
    out = subprocess.run([str(python), str(driver), str(split), str(test), str(project), f"{budget:g}"],
                         check=True, capture_output=True, text=True, env=env, cwd=work).stdout
    wall = time.perf_counter() - start
    found = json.loads(out.strip().splitlines()[-1])
    return {"tool": "ultralytics yolov8n-cls (128 px, AdamW)", "version": f"ultralytics {found['version']}",
            "precision": "fp32", "budget_min": budget, "epochs": found["epochs"], "train_s": found["train_s"],
            "wall_s": wall, "accuracy": found["accuracy"], "accuracy_tta": None}


def earlier_rows(path: Path) -> list[dict]:
    """The rows of an earlier run's CSV, with numbers as numbers (an empty cell is None)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{key: (NUMBERS[key](value) if value else None) if key in NUMBERS else value
                 for key, value in row.items()} for row in csv.DictReader(handle)]


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows, less those this run measured again (same tool, precision and budget), then this run's."""
    def key(row: dict) -> tuple:
        return row["tool"], row["precision"], float(row["budget_min"])

    measured = {key(row) for row in new}
    return [row for row in old if key(row) not in measured] + new


def table_row(row: dict) -> str:
    tta = "" if row["accuracy_tta"] is None else f"{row['accuracy_tta']:.4f}"
    return (f"| {row['tool']} | {row['version']} | {row['precision']} | {row['budget_min']:g} | {row['epochs']} | "
            f"{row['train_s']:.0f} | {row['accuracy']:.4f} | {tta} |")


def draw(rows: list[dict], path: Path) -> None:
    """Accuracy against training minutes: one line per peer, and one per precision through catsdogs'
    best recipe at each budget (each point named by its recipe; other recipes as open circles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    lines: dict[str, list[dict]] = {}
    for row in rows:
        ours = row["version"].startswith("catsdogs")
        lines.setdefault(f"catsdogs recipes ({row['precision']})" if ours else row["tool"], []).append(row)
    for label, points in lines.items():
        best: dict[float, dict] = {}  # catsdogs' line goes through its best recipe at each budget
        for row in points:
            if row["budget_min"] not in best or row["accuracy"] > best[row["budget_min"]]["accuracy"]:
                best[row["budget_min"]] = row
        on_line = sorted(best.values(), key=lambda r: r["train_s"])
        drawn = axes.plot([r["train_s"] / 60 for r in on_line], [r["accuracy"] for r in on_line], marker="o",
                          label=label)
        others = [row for row in points if row not in on_line]
        axes.scatter([r["train_s"] / 60 for r in others], [r["accuracy"] for r in others], facecolors="none",
                     edgecolors=drawn[0].get_color())
        if label.startswith("catsdogs"):
            for row in points:
                axes.annotate(row["tool"], (row["train_s"] / 60, row["accuracy"]), textcoords="offset points",
                              xytext=(6, -3), fontsize=7)
    cpus = sorted({row.get("cpu") or "?" for row in rows})
    axes.set_title(f"2-core CPU ({', '.join(cpus)}); tested on photos no run trained on", fontsize=9)
    axes.margins(x=0.15)
    axes.set_xlabel("training minutes")
    axes.set_ylabel("accuracy on unseen photos")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=Path, default=SHARED / "PetImages-large", help="photos to train on")
    parser.add_argument("--test", type=Path, default=SHARED / "PetImages-dev", help="disjoint photos to measure on")
    parser.add_argument("--recipes", nargs="*", default=["cpu-fast"], help="names in configs/recipes/")
    parser.add_argument("--budgets", nargs="+", type=float, default=[2, 5, 10, 20], help="minutes of training")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--peers", action="store_true", help="also the tutorial's pipeline and Ultralytics")
    parser.add_argument("--work", type=Path, default=Path("bench-tta"), help="split, runs and the peers' venv")
    parser.add_argument("--keep-runs", action="store_true",
                        help="measure a recipe's finished run in --work again instead of training it anew")
    parser.add_argument("--out", type=Path, default=Path("time-to-accuracy"), help="writes OUT.csv and OUT.png")
    args = parser.parse_args()
    for folder in (args.large, args.test):
        if not folder.is_dir():
            print(f"{folder} is not a folder of class folders (see docs/benchmarks.md)", file=sys.stderr)
            return 1
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    split = make_split(args.large, args.work)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"train on {split}, test on {args.test}")
    print("| tool | version | precision | budget min | epochs | training s | accuracy | with TTA |")
    print("|---|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    cpu = f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    for budget in args.budgets:
        for recipe in args.recipes:
            for precision in args.precision:
                rows.append(run_recipe(recipe, precision, budget, split, args.test, args.work, args.keep_runs))
                print(table_row(rows[-1]), flush=True)
        if args.peers:
            rows.append(run_tutorial(budget, split, args.test))
            print(table_row(rows[-1]), flush=True)
            rows.append(run_ultralytics(budget, split, args.test, args.work))
            print(table_row(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row["cpu"] = cpu
    rows = merge(earlier_rows(args.out.with_suffix(".csv")), rows)
    with args.out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    draw(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

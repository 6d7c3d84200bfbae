"""A short check of the accelerator path: train and evaluate in each precision, on generated photos.

    python benchmarks/device_check.py                 # on whatever `--device auto` picks
    python benchmarks/device_check.py --device cpu    # the same steps on the CPU

It writes a small split of generated photos (no dataset needed), then for each precision
trains cnn3 for two epochs and a recipe model for a few steps, evaluates the best checkpoint,
and prints what the run chose (device, precision, cache placement), the images/s, and the
accuracy. Then: predict and explain on the device, an interrupted run resumed against a
straight one, the TrivialAugment and RandAugment presets, configs/recipes/gpu.yaml for two
epochs with TTA, configs/recipes/finetune.yaml from ImageNet weights (where they are in torch's
hub cache or can be downloaded; skipped, saying so, elsewhere), and on CUDA a run under torchrun (NCCL) and its resume. Meant for a few
minutes on a lent GPU machine; every line it prints is a fact to record.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catsdogs.inference.evaluate import evaluate_run
from catsdogs.process import configure_process
from catsdogs.training.config import TrainConfig
from catsdogs.training.runs import RunFolder
from catsdogs.training.train import train


def write_split(root: Path, per_class: tuple[int, int, int], size: int) -> Path:
    """Cats reddish, dogs bluish, with noise: learnable in a couple of epochs."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val", "test"), per_class):
        for name, colour in {"Cat": (190, 70, 60), "Dog": (60, 70, 190)}.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                noise = rng.normal(0, 40, (size, size, 3))
                pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def check_predict_and_explain(run_dir: Path, data: Path, device: str, work: Path) -> None:
    """`predict` must give evaluate's probabilities on the device; `explain` must draw its maps there."""
    import csv

    from catsdogs.inference.explain import explain_photos
    from catsdogs.inference.predict import collect_photos, load_trained, predict_photos

    trained = load_trained(run_dir, device=device)
    photos = collect_photos([data / "test"])
    start = time.perf_counter()
    result = predict_photos(trained, photos, progress=False)
    seconds = time.perf_counter() - start
    with RunFolder(run_dir).predictions_path.open(encoding="utf-8", newline="") as handle:
        expected = {row["path"]: float(row["p_Dog"]) for row in csv.DictReader(handle)}
    gap = max(abs(expected[str(path)] - float(row[1])) for path, row in zip(result.paths, result.probs))
    print(f"predict on {trained.device} ({trained.precision.name}): {len(result.paths)} photos in {seconds:.1f} s, "
          f"largest difference from evaluate's probabilities {gap:.2e}")
    done, _, layer = explain_photos(trained, photos[:4], RunFolder(work).explain_dir, progress=False)
    print(f"explain on {trained.device}: {len(done)} figures at layer {layer}")


def check_resume(data: Path, device: str, work: Path) -> None:
    """An interrupted run resumed against a straight one: on a GPU they should agree closely, not exactly."""
    from catsdogs.training.checkpoint import SavedModel

    runs = {}
    for name, epochs in (("straight", 2), ("resumed", 1)):
        cfg = TrainConfig(data=str(data), optim="adam", model="cnn3", epochs=epochs, image_size=128,
                          device=device, out=str(work / f"resume-{name}"))
        runs[name] = train(cfg, progress=False, log=lambda line: None).run_dir
    train(None, resume=runs["resumed"], flags={"epochs": 2}, progress=False, log=lambda line: None)
    a, b = (SavedModel.from_state(RunFolder(runs[name]).load("last")).weights for name in ("straight", "resumed"))
    gap = max(float((a[key].float() - b[key].float()).abs().max()) for key in a)
    print(f"resume after 1 of 2 epochs: largest weight difference from a straight run {gap:.2e}")


def check_augments_and_recipe(data: Path, device: str, work: Path, size: int) -> None:
    """The torchvision v2 presets on the device's batches, and the GPU recipe cut short (at `size` px), with TTA."""
    from catsdogs.training.config import build_config

    recipe = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "gpu.yaml"
    runs = [(f"augment {name}", TrainConfig(data=str(data), optim="adam", model="cnn3", epochs=1, image_size=128,
                                             device=device, augment=name, out=str(work / f"augment-{name}")))
            for name in ("trivialaugment", "randaugment")]
    runs.append(("gpu.yaml, 2 epochs", build_config(recipe, {"data": str(data), "out": str(work / "recipe"),
                                                             "device": device, "epochs": 2,
                                                             "image_size": max(size, 64)})))
    for label, cfg in runs:
        start = time.perf_counter()
        result = train(cfg, progress=False, log=lambda line: None)
        seconds = time.perf_counter() - start
        plain = evaluate_run(result.run_dir, device=device, progress=False).metrics["accuracy"]
        tta = evaluate_run(result.run_dir, device=device, progress=False, tta=True).metrics["accuracy"]
        print(f"{label}: {result.epochs_done} epoch(s) in {seconds:.1f} s, test {plain:.3f}, with TTA {tta:.3f}")


def check_finetune(data: Path, device: str, work: Path) -> None:
    """configs/recipes/finetune.yaml from ImageNet weights (2 epochs: one frozen, one all layers), where the
    weights are in torch's hub cache or can be downloaded; otherwise it says so and skips."""
    from catsdogs.errors import CatsdogsError
    from catsdogs.training.config import build_config
    from catsdogs.training.pretrained import imagenet_weights

    try:
        weights = imagenet_weights("resnet18", progress=False)
    except CatsdogsError as error:
        print(f"finetune.yaml: skipped, no ImageNet weights here ({error})")
        return
    recipe = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "finetune.yaml"
    cfg = build_config(recipe, {"data": str(data), "out": str(work / "finetune"), "device": device, "epochs": 2,
                                "pretrained": str(weights)})
    cfg = dataclasses.replace(cfg, freeze_epochs=1)
    start = time.perf_counter()
    lines: list[str] = []
    result = train(cfg, progress=False, log=lines.append)
    seconds = time.perf_counter() - start
    accuracy = evaluate_run(result.run_dir, device=device, progress=False).metrics["accuracy"]
    epochs = [line.split("  ")[0] + ": val acc " + line.split(" acc ")[-1].split()[0] for line in lines
              if line.startswith("epoch ")]
    print(f"finetune.yaml from {weights.name}, 1 epoch head only then 1 all layers: {seconds:.1f} s, "
          f"{'; '.join(epochs)}; test {accuracy:.3f}")


def check_torchrun(data: Path, work: Path) -> None:
    """Training under torchrun with NCCL, on up to two GPUs, then its resume command."""
    import subprocess

    count = min(2, torch.cuda.device_count())
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}",
            "-m", "catsdogs", "train"]
    out = work / "torchrun"
    for args in (["--data", str(data), "--optim", "adam", "--image-size", "128", "--epochs", "1", "--out", str(out)],
                 ["--resume", str(out), "--epochs", "2"]):
        done = subprocess.run(base + args, capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.strip()]
        print(f"torchrun, {count} process(es), {args[0]}: exit {done.returncode}; "
              + " | ".join(line for line in lines if line.startswith(("device:", "epoch", "best", "Error"))))


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--images", type=int, default=600, help="training photos per class")
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    work = Path(tempfile.mkdtemp(prefix="device-check-"))
    lines: list[str] = []
    try:
        data = write_split(work / "data", (args.images, args.images // 5, args.images // 5), args.size)
        for model, precision, epochs, extra in (("cnn3", "fp32", 2, {}), ("cnn3", "auto", 2, {}),
                                                ("cnn3", "fp16", 2, {}),
                                                ("bncnn-s", "auto", 2, {"augment": "rrc-jitter", "ema": 0.99,
                                                                        "optim": "sgd-nesterov",
                                                                        "scheduler": "onecycle"})):
            cfg = TrainConfig(**{"data": str(data), "optim": "adam", "model": model, "epochs": epochs,
                                 "image_size": 128, "precision": precision, "device": args.device,
                                 "out": str(work / f"{model}-{precision}"), **extra})
            lines.clear()
            start = time.perf_counter()
            result = train(cfg, progress=False, log=lines.append)
            seconds = time.perf_counter() - start
            chosen = next(line for line in lines if line.startswith("device:"))
            metrics = evaluate_run(result.run_dir, device=args.device, progress=False).metrics
            seen = 2 * args.images * result.epochs_done
            print(f"{model} --precision {precision}: {chosen}")
            print(f"    {result.epochs_done} epochs in {seconds:.1f} s ({seen / seconds:.0f} img/s incl. start-up), "
                  f"best val {result.best_val_acc:.3f}, test {metrics['accuracy']:.3f} on {metrics['images']}")
        check_predict_and_explain(result.run_dir, data, args.device, work)
        check_resume(data, args.device, work)
        check_augments_and_recipe(data, args.device, work, args.size)
        check_finetune(data, args.device, work)
        if torch.cuda.is_available() and args.device in ("auto", "cuda"):
            check_torchrun(data, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

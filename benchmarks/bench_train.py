"""Training and evaluation speed of catsdogs against the tutorial's pipeline, on the same split.

Run from the repository root, on a folder written by `catsdogs split`:

    python benchmarks/bench_train.py --data data

(a) the tutorial: torchvision ImageFolder + Resize + RandomHorizontalFlip + ToTensor through a
DataLoader, float32, NCHW, decoding every image every epoch; (b) `catsdogs.training.train.train`
with its defaults (decode-once cache built inside the timing, bf16 autocast where the CPU has
it, channels-last). Both train cnn3 with Adam for the same epochs at the same batch size and image
size, validating after every epoch, in this one process; the ratio b/a is the speed-up.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from catsdogs.data.cache import CACHE_DIR, BatchSource, load_cache, read_split
from catsdogs.data.transforms import eval_preset
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.process import configure_process
from catsdogs.training.config import TrainConfig
from catsdogs.training.hardware import select_precision
from catsdogs.training.scoring import evaluate_source
from catsdogs.training.models import build_model
from catsdogs.training.runs import RunFolder
from catsdogs.training.train import train


def training_flops_per_image(image_size: int) -> float:
    """Forward + backward FLOPs of one cnn3 training image, counted by torch."""
    model = build_model("cnn3", 2, image_size)
    images = torch.randn(8, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(images), torch.zeros(8, dtype=torch.long)).backward()
    return counter.get_total_flops() / 8


def tutorial_loader(folder: Path, image_size: int, batch_size: int, train: bool, workers: int):
    from torchvision import datasets, transforms

    steps = [transforms.Resize((image_size, image_size))]
    if train:
        steps.append(transforms.RandomHorizontalFlip(0.25))
    steps.append(transforms.ToTensor())
    dataset = datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers)


def run_tutorial(data: Path, image_size: int, batch_size: int, epochs: int, workers: int) -> tuple[float, int]:
    """The tutorial's loop (with its loss fixed to cross-entropy on logits); returns seconds, images."""
    torch.manual_seed(0)
    model = build_model("cnn3", 2, image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = tutorial_loader(data / "train", image_size, batch_size, True, workers)
    val_loader = tutorial_loader(data / "val", image_size, batch_size, False, workers)
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
            seen += len(labels)
        model.eval()
        with torch.no_grad():
            for images, labels in val_loader:
                model(images)
    return time.perf_counter() - start, seen


def tutorial_evaluate(data: Path, image_size: int, workers: int) -> tuple[float, int]:
    model = build_model("cnn3", 2, image_size).eval()
    loader = tutorial_loader(data / "test", image_size, 100, False, workers)
    start, count = time.perf_counter(), 0
    with torch.no_grad():
        for images, _ in loader:
            model(images).argmax(1)
            count += len(images)
    return time.perf_counter() - start, count


def main() -> int:
    configure_process()  # as the catsdogs commands do (see catsdogs.process), so results match theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="a folder written by `catsdogs split`")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for the tutorial pipeline")
    parser.add_argument("--tiny", action="store_true", help="one epoch, correctness only (used by the tests)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"{args.data} is not a split folder: run `catsdogs split PetImages --out {args.data}` first",
              file=sys.stderr)
        return 1
    epochs = 1 if args.tiny else args.epochs
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        # catsdogs' cache lives beside the split: clear it so its build is inside the timing.
        shutil.rmtree(args.data / CACHE_DIR, ignore_errors=True)
        n_train = len(read_split(args.data, "train"))
        print(f"data: {args.data} ({n_train} training images), cnn3 at {args.image_size}px, Adam, "
              f"batch {args.batch_size}, {epochs} epochs with validation, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")

        tut_seconds, tut_images = run_tutorial(args.data, args.image_size, args.batch_size, epochs, args.workers)
        tut_rate = tut_images / tut_seconds
        print(f"(a) tutorial pipeline : {tut_seconds:7.1f} s  {tut_rate:7.1f} train img/s (whole run)")

        cfg = TrainConfig(data=str(args.data), optim="adam", image_size=args.image_size, epochs=epochs,
                          batch_size=args.batch_size, out=str(work / "run"), cache="rebuild")
        start = time.perf_counter()
        result = train(cfg, progress=False, log=lambda line: None)
        ours_seconds = time.perf_counter() - start
        ours_rate = tut_images / ours_seconds
        print(f"(b) catsdogs default  : {ours_seconds:7.1f} s  {ours_rate:7.1f} train img/s (whole run, "
              f"cache build included)")
        print(f"speed-up b/a: {tut_seconds / ours_seconds:.2f}x")
        with RunFolder(result.run_dir).history_path.open(encoding="utf-8", newline="") as handle:
            epoch_seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
        print("catsdogs epoch seconds (train + val): " + ", ".join(f"{s:.1f}" for s in epoch_seconds))

        flops = training_flops_per_image(args.image_size)
        steady = n_train / min(epoch_seconds)
        print(f"training FLOPs per image: {flops / 1e9:.3f} GFLOP; best catsdogs epoch {steady:.0f} img/s "
              f"= {flops * steady / 1e9:.0f} GFLOP/s achieved (tutorial: {flops * tut_rate / 1e9:.0f} GFLOP/s)")

        tut_eval_seconds, n_test = tutorial_evaluate(args.data, args.image_size, args.workers)
        start = time.perf_counter()
        evaluate_run(result.run_dir, checkpoint="last", progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_run(result.run_dir, checkpoint="last", progress=False)
        warm = time.perf_counter() - start
        tut_eval = n_test / tut_eval_seconds
        print(f"evaluate ({n_test} test images): tutorial {tut_eval:.0f} img/s; catsdogs {n_test / cold:.0f} img/s "
              f"first time (cache build included, {tut_eval_seconds / cold:.2f}x), {n_test / warm:.0f} img/s "
              f"cached ({tut_eval_seconds / warm:.2f}x)")
        model_only = _model_eval_rate(args.data, args.image_size)
        print(f"evaluate, model only on cached images: {model_only:.0f} img/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _model_eval_rate(data: Path, image_size: int) -> float:
    split = read_split(data, "test")
    source = BatchSource(split, eval_preset(image_size), load_cache(split, image_size, progress=False))
    model = build_model("cnn3", 2, image_size).to(memory_format=torch.channels_last)
    device = torch.device("cpu")
    start = time.perf_counter()
    evaluate_source(model, source, select_precision("auto", device), device)
    return len(split) / (time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(main())

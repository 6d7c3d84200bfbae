"""Profile catsdogs' training step (augmentation, forward, backward, optimizer, EMA) with torch.profiler.

Prints the top rows by self CPU time over a few steps on synthetic uint8 batches, so that the
time outside convolutions (batch norm, activations, optimizer, EMA, copies) can be seen:

    python benchmarks/profile_step.py --model bncnn-s --image-size 128 --optim sgd-nesterov --ema 0.998
    python benchmarks/profile_step.py --model cnn3 --image-size 224 --optim adam --batch-size 100
    python benchmarks/profile_step.py ... --impl for-loop   # the optimizer's per-tensor loop, the old EMA update
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from catsdogs.data.transforms import train_preset
from catsdogs.optim import build_optimizer, get_optimizer_spec, parameter_groups
from catsdogs.training.ema import ModelEMA
from catsdogs.cpus import tune_allocator
from catsdogs.training.hardware import select_precision
from catsdogs.training.models import build_model


def old_ema_update(ema: ModelEMA, model: nn.Module) -> None:
    """The EMA update before the multi-tensor one: one lerp_ per tensor."""
    ema.updates += 1
    decay = min(ema.decay, (1 + ema.updates) / (10 + ema.updates))
    current = model.state_dict()
    with torch.no_grad():
        for name, average in ema.module.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(current[name], 1.0 - decay)
            else:
                average.copy_(current[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bncnn-s")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--optim", default="sgd-nesterov")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--augment", default="crop")
    parser.add_argument("--ema", type=float, default=0.998, help="0: no EMA")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--impl", choices=["catsdogs", "for-loop"], default="catsdogs",
                        help="for-loop: the optimizer with foreach=False and the per-tensor EMA update (before)")
    parser.add_argument("--micro-batch", type=int, default=None, help="images per forward/backward pass")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()

    tune_allocator()  # as `catsdogs train` does
    torch.manual_seed(0)
    device = torch.device("cpu")
    precision = select_precision(args.precision, device)
    model = build_model(args.model, 2, args.image_size).to(memory_format=torch.channels_last)
    extra = {"foreach": False} if args.impl == "for-loop" else {}
    spec = get_optimizer_spec(args.optim)
    optimizer = build_optimizer(args.optim, parameter_groups(model, spec.defaults.get("weight_decay", 5e-4)),
                                **extra)
    ema = ModelEMA(model, args.ema) if args.ema else None
    preset = train_preset(args.image_size, hflip=0.5, augment=args.augment)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=torch.uint8)
    labels = torch.randint(0, 2, (args.batch_size,))

    def step() -> None:
        images = preset(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        size = args.micro_batch or len(labels)
        for part, part_labels in zip(images.split(size), labels.split(size)):
            with precision.autocast(device):
                loss = loss_fn(model(part).float(), part_labels) * len(part_labels) / len(labels)
            loss.backward()
        optimizer.step()
        if ema is not None:
            old_ema_update(ema, model) if args.impl == "for-loop" else ema.update(model)

    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds = time.perf_counter() - started
    print(f"{args.model} {args.image_size}px batch {args.batch_size} {args.precision} {args.optim} ema {args.ema} "
          f"impl {args.impl}, micro-batch {args.micro_batch}, torch {torch.__version__}, {torch.get_num_threads()} threads: {args.steps} steps in "
          f"{seconds:.1f} s under the profiler ({args.steps * args.batch_size / seconds:.0f} img/s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

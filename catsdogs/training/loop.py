"""The inside of a training run: where it stands, one epoch of steps, validation, stopping on signals."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from catsdogs.data.cache import BatchSource
from catsdogs.interrupts import CtrlC, on_ctrl_c
from catsdogs.progress import progress_bar
from catsdogs.training.config import TrainConfig
from catsdogs.training.distributed import SOLO, Team, agree_max, from_main, shard_batches, total
from catsdogs.training.hardware import Precision
from catsdogs.training.models import head_name
from catsdogs.training.schedules import lr_factor
from catsdogs.training.scoring import balanced_accuracy, evaluate_source
from catsdogs.training.state import Progress, TrainState
from catsdogs.training.tensorboard_log import Board
from catsdogs.training.tricks import effective_lr

Log = Callable[[str], None]


def stop_on_signals(log: Log, repeat_window: float = 0.0) -> AbstractContextManager[CtrlC]:
    """First SIGINT/SIGTERM asks the loop to stop after the current step (`requested`); a second one aborts.

    Under torchrun a repeat within `repeat_window` seconds is torchrun passing on the same
    Ctrl-C (see CtrlC). One process has no such echo: any second Ctrl-C aborts at once.
    """
    again = f"again after {repeat_window:g} s " if repeat_window else "again "
    notice = f"\nstopping after this step and saving last.pt (press Ctrl-C {again}to quit at once)"
    return on_ctrl_c(CtrlC(first="note", again="raise", repeat_window=repeat_window, notice=lambda: log(notice)),
                     signals=(signal.SIGINT, signal.SIGTERM))


@dataclass
class Hooks:
    """Callables a run calls with its Progress: after each training step (once it is counted), after each
    epoch (once its row is in the history, before the run judges and saves it), and after each save of
    last.pt. For what watches or steers a run from outside: tests, tools."""

    after_step: list[Callable[[Progress], None]] = dataclasses.field(default_factory=list)
    after_epoch: list[Callable[[Progress], None]] = dataclasses.field(default_factory=list)
    after_save: list[Callable[[Progress], None]] = dataclasses.field(default_factory=list)


def class_weights(source: BatchSource, scheme: str) -> torch.Tensor | None:
    """Per-class loss weights for `scheme` (none, balanced) from the training photos' labels.

    balanced: photos / (classes x the class's photos), as scikit-learn's class_weight="balanced";
    a class without photos gets weight 0 (it has no loss to weigh).
    """
    if scheme == "none":
        return None
    counts = np.bincount(source.split.labels[source.valid], minlength=len(source.split.classes))
    weights = np.where(counts > 0, len(source.valid) / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def step_size(cfg: TrainConfig, step_index: int, total: int) -> int | None:
    """The side step `step_index` of `total` trains at: progressive_size for the first
    progressive_fraction of the steps (progressive resizing); None: the full image_size."""
    if cfg.progressive_size and step_index < cfg.progressive_fraction * total:
        return cfg.progressive_size
    return None


def alternating_flip_coins(cfg: TrainConfig, count: int) -> torch.Tensor | None:
    """Alternating flips: each of `count` photos gets a fixed coin, and photo i is mirrored in the
    epochs where (its coin + epoch) is odd. None under random flips."""
    if cfg.hflip_mode != "alternate":
        return None
    return torch.randint(0, 2, (count,), generator=torch.Generator().manual_seed(cfg.seed + 2)).bool()


def step_flips(coins: torch.Tensor | None, indices: Sequence[int], epoch: int, batch: int) -> torch.Tensor | None:
    """Which images of the batch of photos `indices` are mirrored in `epoch` (0-based) under alternating
    flips; None (random flips) when there are no coins or a photo of the batch could not be read."""
    if coins is None:
        return None
    flips = coins[torch.as_tensor(indices)] ^ bool(epoch % 2)
    return flips if len(flips) == batch else None


class EpochLoop:
    """The per-epoch work: training steps with progress, then validation."""

    def __init__(self, *, cfg: TrainConfig, state: TrainState, precision: Precision, device: torch.device,
                 train_source: BatchSource, val_source: BatchSource, team: Team = SOLO, net: nn.Module | None = None,
                 board: Board | None = None, hooks: Hooks | None = None) -> None:
        """`state.model` is the network to save; `net` what runs the steps (its DistributedDataParallel
        wrapper when `team` has several processes), `state.model` itself by default. `board`: where the run
        writes TensorBoard events, if it does."""
        self.cfg, self.state, self.team = cfg, state, team
        self.net = net if net is not None else state.model
        self.precision, self.device = precision, device
        self.train_source, self.val_source = train_source, val_source
        self.board, self.hooks = board, hooks if hooks is not None else Hooks()
        # Summed, then divided by the whole batch's total weight: passes of a micro-batch add up to
        # the batch's loss exactly, with class weights too.
        self.class_weight = class_weights(train_source, cfg.class_weights)
        self.loss_fn = nn.CrossEntropyLoss(
            weight=None if self.class_weight is None else self.class_weight.to(device),
            label_smoothing=cfg.label_smoothing, reduction="sum")
        self.steps_per_epoch = math.ceil(len(train_source) / cfg.batch_size)
        # The schedule scales the configured lr: never the groups' lr, which a resumed optimizer
        # brings back as it was at the interruption (mid-schedule).
        lr = effective_lr(cfg.lr, cfg.batch_size, cfg.lr_batch)
        self.base_lrs = [lr * group.get("lr_scale", 1.0) for group in state.optimizer.param_groups]
        # Fine-tuning: the body (all but the head) stays still for the first cfg.freeze_epochs epochs.
        head = head_name(state.model) if cfg.freeze_epochs else None
        self.body = [p for name, p in state.model.named_parameters()
                     if head is not None and p.requires_grad and not (name == head or name.startswith(f"{head}."))]
        self.frozen = False
        self.budget_seconds = cfg.time_budget * 60.0 if cfg.time_budget else None
        self.partial_epoch: tuple[int, int] | None = None  # (steps done, steps planned) when the budget cut one
        self.micro_batch = cfg.micro_batch  # None: each batch in one pass
        self.view_size: int | None = None  # the next step's image side when smaller than image_size
        self.view_flips: torch.Tensor | None = None  # the next step's mirrored images, under alternating flips
        # Progressive resizing: a step at the smaller size costs about (small / full)^2 of a full one.
        self.low_size = cfg.progressive_size if cfg.progressive_size and cfg.progressive_fraction > 0 else None
        self.low_cost = (self.low_size / cfg.image_size) ** 2 if self.low_size else 1.0
        self.flip_coins = alternating_flip_coins(cfg, len(train_source))

    def _total_steps(self, progress: Progress, spent: float) -> int:
        """Steps the schedule spans: all epochs, or what the time budget allows at the pace so far."""
        planned = self.steps_per_epoch * self.cfg.epochs
        if self.budget_seconds is None or progress.global_step < 5 or spent <= 0:
            return planned
        # Pace in full-size steps a second, counting a smaller step as the fraction of one it costs.
        done = progress.global_step
        pace = (done - progress.low_res_steps * (1.0 - self.low_cost)) / spent
        budget = max(self.budget_seconds - spent, 0.0) * pace  # full-size steps the rest of the time holds
        fraction = self.cfg.progressive_fraction if self.low_size else 0.0
        # The total N has its first fraction x N steps small: solve for N when that point is still ahead.
        estimate = (budget + done * self.low_cost) / (fraction * self.low_cost + 1.0 - fraction)
        if estimate * fraction <= done:
            estimate = done + budget
        return max(min(planned, int(estimate)), progress.global_step + 1)

    def _set_lr(self, step_index: int, total: int) -> float:
        warmup = round(self.cfg.warmup_epochs * self.steps_per_epoch)
        factor = lr_factor(self.cfg.scheduler, step_index, total, warmup)
        for group, base in zip(self.state.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def run_epoch(self, stop: CtrlC, show: bool) -> bool:
        """Train one epoch (or its remainder after a resume) from `state.progress`; False when stopped part-way."""
        progress, order_gen = self.state.progress, self.state.order_gen
        if progress.step == 0 or progress.epoch_order_state is None:
            progress.epoch_order_state = order_gen.get_state()
            progress.sums = (0.0, 0, 0, 0.0)
        else:
            order_gen.set_state(progress.epoch_order_state)
        order = shard_batches(self.train_source.order(self.cfg.batch_size, order_gen), self.team)
        loss_sum, correct, seen, seconds = progress.sums
        self._freeze_body(progress.epoch < self.cfg.freeze_epochs)
        self.net.train()
        started = time.perf_counter()
        bar = progress_bar(total=len(order), initial=progress.step, unit="batch", show=show, leave=False,
                           desc=f"epoch {progress.epoch + 1}/{self.cfg.epochs}")
        before = sum(row["seconds"] for row in progress.history)  # training time of earlier epochs
        steps_planned = self._agreed_total(progress, before + seconds)
        lr = self._set_lr(progress.global_step, steps_planned)
        batches = self.train_source.batches(order[progress.step:], pin=self.device.type == "cuda")
        for index, (images, labels) in zip(order[progress.step:], batches):
            lr = self._set_lr(progress.global_step, steps_planned)
            # How _step shows this batch: its side (progressive resizing), and alternating flips.
            self.view_size = step_size(self.cfg, progress.global_step, steps_planned)
            self.view_flips = step_flips(self.flip_coins, index, progress.epoch, len(labels))
            batch_loss, batch_correct = self._step(images, labels)
            progress.low_res_steps += self.view_size is not None
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(labels)
            progress.step += 1
            progress.global_step += 1
            if self.board is not None:
                self.board.step(progress.global_step, batch_loss, lr)
            for hook in self.hooks.after_step:
                hook(progress)
            elapsed = seconds + time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
            bar.update()
            budget_hit = self.budget_seconds is not None and before + elapsed >= self.budget_seconds
            stop_hit = stop.requested and progress.step < len(order)
            # One decision for all processes, or they would wait on each other forever.
            budget_hit, stop_hit, steps_planned = agree_max(
                [budget_hit, stop_hit, self._total_steps(progress, before + elapsed)], self.team)
            steps_planned = int(steps_planned)
            if budget_hit:
                progress.budget_spent = True  # end this epoch early: validate and record it
                if progress.step < len(order):
                    self.partial_epoch = (progress.step, len(order))
                break
            if stop_hit:
                progress.sums = self._team_sums(loss_sum, correct, seen, seconds + time.perf_counter() - started)
                bar.close()
                return False
        bar.close()
        val_loss, val_acc, val_balanced_acc = self.validate()
        loss_sum, correct, seen, elapsed = self._team_sums(loss_sum, correct, seen,
                                                           seconds + time.perf_counter() - started)
        progress.epoch += 1
        progress.step = 0
        progress.epoch_order_state = None
        progress.sums = (0.0, 0, 0, 0.0)
        progress.history.append({
            "epoch": progress.epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "val_loss": val_loss, "val_acc": val_acc, "val_balanced_acc": val_balanced_acc, "lr": lr,
            "seconds": round(elapsed, 3)})
        for hook in self.hooks.after_epoch:
            hook(progress)
        return True

    def _freeze_body(self, frozen: bool) -> None:
        """Alone, requires_grad spares the body's backward pass. Under torchrun DistributedDataParallel fixed
        at its start which parameters it reduces, so there the body's gradients are dropped before each step."""
        self.frozen = frozen and bool(self.body)
        if not self.team.enabled:
            for parameter in self.body:
                parameter.requires_grad_(not frozen)

    def _agreed_total(self, progress: Progress, spent: float) -> int:
        return int(agree_max([self._total_steps(progress, spent)], self.team)[0])

    def _team_sums(self, loss_sum: float, correct: int, seen: int, seconds: float) -> tuple[float, int, int, float]:
        """The epoch's training sums over all processes, and the slowest one's time."""
        loss_sum, correct, seen = total([loss_sum, correct, seen], self.team)
        return loss_sum, int(correct), int(seen), agree_max([seconds], self.team)[0]

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """One optimizer step on the batch, in passes of `micro_batch` images whose gradients add up
        to the batch's (each pass's summed loss divided by the whole batch's total weight).

        Under DistributedDataParallel, which averages the processes' gradients, the batch is the
        processes' shares together: each divides by the mean over processes of the shares' weights,
        so that the average is the whole batch's gradient however the images and the class weight
        fall between the shares. Returns this share's part of the batch's mean loss times the
        batch's images (its part of the epoch's loss sum), and its correct answers.
        """
        images = self.train_source.preset(images.to(self.device, non_blocking=True), self.state.aug_gen, self.view_size,
                                          self.view_flips)
        if self.board is not None:
            self.board.batch(images, labels)  # the run's first batch, as the model gets it
        weight = len(labels) if self.class_weight is None else float(self.class_weight[labels.cpu()].sum())
        weight, count = total([weight, len(labels)], self.team)
        weight /= self.team.world
        labels = labels.to(self.device, non_blocking=True)
        optimizer, scaler = self.state.optimizer, self.state.scaler
        optimizer.zero_grad(set_to_none=True)
        size = self.micro_batch or len(labels)
        passes = list(zip(images.split(size), labels.split(size)))
        loss_sum, correct = 0.0, 0
        for index, (part, part_labels) in enumerate(passes):
            # Under DistributedDataParallel the gradients are averaged across processes once, at the last pass.
            quiet = index < len(passes) - 1 and isinstance(self.net, nn.parallel.DistributedDataParallel)
            with self.net.no_sync() if quiet else contextlib.nullcontext():
                with self.precision.autocast(self.device):
                    logits = self.net(part)
                    loss = self.loss_fn(logits.float(), part_labels) / weight  # this pass's part of the batch's
                scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
            correct += int((logits.argmax(1) == part_labels).sum())
        if self.frozen:
            for parameter in self.body:
                parameter.grad = None  # the optimizer skips a parameter without a gradient
        scaler.step(optimizer)
        scaler.update()
        if self.state.ema is not None:
            self.state.ema.update(self.state.model)
        return loss_sum * count / self.team.world, correct

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float]:
        """Validation loss, accuracy and balanced accuracy; with several processes, process 0 measures
        and tells the rest."""
        result = None
        if self.team.main:
            loss, acc, probs, labels = evaluate_source(self.state.kept_model, self.val_source, self.precision, self.device)
            result = loss, acc, balanced_accuracy(probs.argmax(1), labels, len(self.val_source.split.classes))
        return from_main(result, self.team)


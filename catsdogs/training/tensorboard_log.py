"""TensorBoard event files of a run, in RUN_DIR/tb: `tensorboard --logdir runs` shows every run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from catsdogs.data.transforms import denormalise
from catsdogs.errors import CatsdogsError
from catsdogs.training.config import TrainConfig
from catsdogs.training.selection import best_epoch, selected_by

TB_DIR = "tb"
LOSS_EVERY = 10  # training steps between two points of the training loss and learning rate
GRID_IMAGES = 32  # of the first training batch
EPOCH_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "lr")
INSTALL = "pip install 'catsdogs[tensorboard]'"


def check_tensorboard() -> None:
    """Refuse a run that asks for TensorBoard where the package is missing, before any work."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise CatsdogsError(f"--tensorboard (tensorboard: true) needs the tensorboard package: {INSTALL}") from None


class Board:
    """Writes a run's points as it trains: the loss and learning rate every LOSS_EVERY steps (x: the
    optimizer step), the epoch's history row (x: the epoch), the first batch as the model got it,
    and at the end the settings with the final metrics (TensorBoard's HParams tab).

    A resumed run opens a new event file in the same folder from its saved step; its purge_step makes
    TensorBoard drop any point the interrupted run wrote after that save (killed mid-epoch), so no
    step has two points.
    """

    def __init__(self, run_dir: Path, start_step: int, classes: Sequence[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=start_step + 1 if start_step else None)
        self.classes = list(classes)
        self.wants_batch = start_step == 0  # a resumed run drew its first batch before

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The run's first training batch (normalised NCHW, as the model got it), once."""
        if not self.wants_batch:
            return
        from torchvision.utils import make_grid

        self.wants_batch = False
        shown = denormalise(images[:GRID_IMAGES].detach()).permute(0, 3, 1, 2).cpu()
        self.writer.add_image("train/first_batch", make_grid(shown, nrow=8, padding=2), 0)
        names = [self.classes[int(label)] for label in labels[:GRID_IMAGES].cpu()]
        self.writer.add_text("train/first_batch_classes", " ".join(names), 0)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if global_step % LOSS_EVERY == 0:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: Mapping[str, Any]) -> None:
        """The epoch's row of history.csv, flushed: it is on disk when last.pt counts the epoch."""
        for column in EPOCH_COLUMNS:
            value = row.get(column)
            if value is not None and not math.isnan(value):
                self.writer.add_scalar(f"epoch/{column}", value, int(row["epoch"]))
        self.writer.flush()

    def finish(self, cfg: TrainConfig, history: Sequence[Mapping[str, Any]], status: str) -> None:
        """The settings and the final metrics, for TensorBoard's HParams tab; the best scores are those of
        the epoch kept as best.pt, by train's own rule."""
        if not history:
            return
        from torch.utils.tensorboard.summary import hparams

        settings = {key: "none" if value is None else value for key, value in cfg.to_dict().items()
                    if key not in ("out", "tensorboard")}
        settings["status"] = status
        last, best = history[-1], best_epoch(history, selected_by(cfg.class_weights))
        results = {"hparams/best_val_acc": best["val_acc"],
                   "hparams/final_val_acc": last["val_acc"], "hparams/final_val_loss": last["val_loss"],
                   "hparams/final_train_loss": last["train_loss"]}
        if not math.isnan(best.get("val_balanced_acc", math.nan)):
            results["hparams/best_val_balanced_acc"] = best["val_balanced_acc"]
        for summary in hparams(settings, results):
            self.writer._get_file_writer().add_summary(summary)
        for tag, value in results.items():
            self.writer.add_scalar(tag, value, int(last["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

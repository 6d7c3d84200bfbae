"""Using a trained run: load its model once, then classify photo files and folders."""

from __future__ import annotations

import csv
import io
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from catsdogs.atomic import write_text_atomic
from catsdogs.cpus import usable_cpus
from catsdogs.data.images import find_photos, load_resized, no_photos_message
from catsdogs.data.transforms import normalise
from catsdogs.errors import CatsdogsError, UsageError, first_line
from catsdogs.names import escape_name
from catsdogs.progress import progress_bar
from catsdogs.training.checkpoint import SavedModel, load_checkpoint
from catsdogs.training.config import TrainConfig, config_from_dict
from catsdogs.training.hardware import Precision, select_device, select_precision
from catsdogs.training.models import MODELS, build_model, count_flops
from catsdogs.training.runs import RunFolder, resolve_checkpoint
from catsdogs.training.scoring import EVAL_BATCH, score_batch


@dataclass
class TrainedModel:
    """A checkpoint's model in eval mode on its device, with what is needed to feed it."""

    model: nn.Module
    cfg: TrainConfig
    classes: list[str]
    device: torch.device
    precision: Precision
    checkpoint: Path
    epoch: int | None
    data_fingerprint: dict[str, str | None] | None = None  # of the split it trained on, per split

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities of a uint8 NHWC batch (the mean with the mirror image under `tta`)."""
        images = normalise(batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
        _, probs = score_batch(self.model, images, self.precision, self.device, "flip" if tta else None)
        return probs.cpu()


def load_trained(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> TrainedModel:
    """Build the model a run's checkpoint was trained as and load its weights (EMA ones if kept)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CatsdogsError(f"run folder {run_dir} does not exist")
    if checkpoint in ("best", "last") and not RunFolder(run_dir).looks_like_run():
        raise CatsdogsError(f"{run_dir} is not a run folder (no config.yaml or checkpoints): name a folder that "
                            "`catsdogs train` made, e.g. runs/adam")
    checkpoint_path = resolve_checkpoint(run_dir, checkpoint)
    saved = SavedModel.from_state(load_checkpoint(checkpoint_path))
    cfg = config_from_dict(saved.config, str(checkpoint_path))
    classes = saved.classes
    torch_device = select_device(device)
    model = build_model(cfg.model, len(classes), cfg.image_size)
    try:
        model.load_state_dict(saved.weights)
    except RuntimeError:
        raise CatsdogsError(f"{checkpoint_path}: its weights do not fit model {cfg.model} "
                            f"at {cfg.image_size}px") from None
    model = model.to(torch_device, memory_format=torch.channels_last).eval()
    return TrainedModel(model, cfg, classes, torch_device, select_precision(cfg.precision, torch_device),
                        checkpoint_path, saved.epoch, saved.data_fingerprint)


def check_image_size(trained: TrainedModel, image_size: int | None) -> int:
    """The side to feed `trained` at: its training size when None, else `image_size` if the model can take it.

    Models that end in global pooling (bncnn-*, the torchvision ones) take any side from their registered
    minimum up; one whose head is sized by the training side (cnn3) only sides whose features have its shape.
    """
    cfg = trained.cfg
    if image_size is None or image_size == cfg.image_size:
        return cfg.image_size
    least = MODELS.get(cfg.model).min_image_size
    if image_size < least:
        raise UsageError(f"--image-size {image_size}: model {cfg.model} needs at least {least}px (this run "
                         f"trained at {cfg.image_size}px)")
    try:  # a pass on the meta device: shapes only, no work
        count_flops(trained.model, image_size)
    except RuntimeError:
        raise UsageError(f"--image-size {image_size}: model {cfg.model} cannot take {image_size}px images, its head "
                         f"is sized for the features of its training size, {cfg.image_size}px: choose a size nearer "
                         "that") from None
    return image_size


def collect_photos(paths: Sequence[str | Path], left_out: list[tuple[Path, str]] | None = None) -> list[Path]:
    """The photos named: files as given, folders searched recursively for photo files, in order.

    Links to folders are followed (each real folder once, so a link loop ends); what a folder held
    besides photos (hidden and other files, broken links, unreadable folders) goes to `left_out`.
    """
    left_out = left_out if left_out is not None else []
    photos: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            search = find_photos(path)
            left_out += search.left_out
            if not search.photos:
                raise UsageError(no_photos_message(path, search.left_out))
            photos += search.photos
        elif path.is_file():
            photos.append(path)
        elif path.is_symlink():
            raise UsageError(f"{path} is a broken or looping link")
        else:
            raise UsageError(f"{path} does not exist")
    if not photos:
        raise UsageError("name at least one photo or folder of photos")
    return list(dict.fromkeys(photos))  # the same file named twice is classified once


def unreadable_reason(error: BaseException) -> str:
    """A short reason a photo could not be read, for the user and the CSV."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too many pixels"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error)


def _decode(path: Path, size: int) -> np.ndarray | str:
    try:
        return load_resized(path, size)
    except Exception as error:  # noqa: BLE001 - decoders raise many types on bad data; report, go on
        try:
            if path.stat().st_size == 0:
                return "empty file"  # as split calls it
        except OSError:
            pass
        return unreadable_reason(error)


def decode_photos(photos: Sequence[Path], size: int, jobs: int | None = None, ahead: int = 2 * EVAL_BATCH
                  ) -> Iterator[tuple[Path, np.ndarray | str]]:
    """Each photo decoded and resized as training saw it, or the reason it could not be; in order.

    At most `ahead` photos (or one per thread, if more) are decoded beyond the one last yielded, so a
    consumer slower than decoding does not hold the whole folder in memory; `pool.map` would queue
    every photo at once. Threads suffice: PIL's decoders and OpenCV's resize release the GIL.
    """
    workers = jobs or usable_cpus()
    queue = iter(photos)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque((path, pool.submit(_decode, path, size)) for path in islice(queue, max(ahead, workers)))
        try:
            while pending:
                path, future = pending.popleft()
                for following in islice(queue, 1):
                    pending.append((following, pool.submit(_decode, following, size)))
                yield path, future.result()
        finally:  # a consumer that stops early waits for the photos being decoded, not for the rest
            for _, future in pending:
                future.cancel()


@dataclass
class Predictions:
    """Probabilities per readable photo (rows follow `paths`), and the photos that were not."""

    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.probs.argmax(1)] if len(self.paths) else []

    def counts(self) -> dict[str, int]:
        predicted = self.predicted
        return {name: predicted.count(name) for name in self.classes}


class Classifier(Protocol):
    """What predict_photos needs: a run's model (TrainedModel) or an exported file's (catsdogs.exported)."""

    classes: list[str]
    image_size: int

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor: ...


def predict_photos(trained: Classifier, photos: Sequence[Path], tta: bool = False, batch_size: int = EVAL_BATCH,
                   progress: bool = True, jobs: int | None = None, image_size: int | None = None) -> Predictions:
    """Classify `photos`, decoded at `image_size` (default: the model's own, see check_image_size); unreadable
    ones are set aside with their reason, never fatal one by one.

    Photos are decoded up to two batches (or one per decoding thread) ahead of the model, so decoding
    overlaps inference while memory holds a few batches of photos, however many there are."""
    result = Predictions(list(trained.classes))
    batch: list[np.ndarray] = []
    names: list[Path] = []
    chunks: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            chunks.append(trained.probabilities(torch.from_numpy(np.stack(batch)), tta=tta))
            result.paths.extend(names)
            batch.clear()
            names.clear()

    decoded = decode_photos(photos, image_size or trained.image_size, jobs, ahead=2 * batch_size)
    for path, image in progress_bar(decoded, total=len(photos), desc="classifying", unit="photo", show=progress,
                                    leave=False):
        if isinstance(image, str):
            result.unreadable.append((path, image))
            continue
        batch.append(image)
        names.append(path)
        if len(batch) == batch_size:
            flush()
    flush()
    if chunks:
        result.probs = torch.cat(chunks).numpy()
    return result


PREDICTIONS_HEADER = ("path", "predicted", "probability")  # then p_<class>..., error


def check_predictions_out(path: Path) -> None:
    """Refuse an --out file whose writing would replace anything but an earlier predictions CSV."""
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder: give a file name ending in .csv")
    if not path.exists():
        return
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        header = []
    if tuple(header[:3]) != PREDICTIONS_HEADER or header[-1:] != ["error"]:
        raise UsageError(f"--out {path} exists and is not a CSV written by `catsdogs predict`: choose another "
                         "name, or move it")


def write_predictions_csv(path: str | Path, predictions: Predictions) -> Path:
    """One row per photo: path, predicted class, its probability, every class's probability, error."""
    path = Path(path)
    classes = predictions.classes
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*PREDICTIONS_HEADER, *[f"p_{c}" for c in classes], "error"])
    for file, row in zip(predictions.paths, predictions.probs):
        best = int(row.argmax())
        writer.writerow([str(file), classes[best], f"{row[best]:.6f}", *[f"{p:.6f}" for p in row], ""])
    for file, reason in predictions.unreadable:
        writer.writerow([str(file), "", "", *["" for _ in classes], reason])
    write_text_atomic(path, buffer.getvalue())
    return path


def format_prediction_lines(predictions: Predictions) -> list[str]:
    """One line per classified photo for the terminal: the class, its probability, the path (last,
    so that names with spaces stay whole). Unreadable photos are the caller's to report apart."""
    lines = []
    width = max(8, *(len(name) + 1 for name in predictions.classes))
    for file, row in zip(predictions.paths, predictions.probs):
        best = int(row.argmax())
        lines.append(f"{predictions.classes[best]:<{width}}{row[best]:>7.3f}  {escape_name(str(file))}")
    return lines

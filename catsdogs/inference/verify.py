"""Verifying an exported file against PyTorch: the photos it is checked on, the figures, and verification.json."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from catsdogs import __version__
from catsdogs.atomic import write_text_atomic
from catsdogs.data.cache import class_folders, read_class_folder, read_split
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.exported import ExportedModel
from catsdogs.inference.predict import TrainedModel, collect_photos, decode_photos

VERIFY_N = 256
CALIBRATION_N = 256  # training photos that set the int8 ranges
PROB_TOLERANCE = 1e-4  # fp32: the largest probability difference allowed from PyTorch fp32
INT8_MIN_AGREEMENT = 0.99  # int8: the share of photos that must keep PyTorch's class
INT8_MIN_PHOTOS = 1000  # int8: photos to measure on at least (or all there are), so the change means something
BATCH = 64
VERIFICATION_FILE = "verification.json"
WRITTEN_BY = "catsdogs export"  # verification.json's mark: a file without it is someone else's, never written into


@dataclass(frozen=True)
class Verification:
    """The exported file against PyTorch (fp32) on the same photos."""

    file: str
    format: str
    photos: int
    source: str
    max_prob_diff: float
    class_differs: int
    pytorch_accuracy: float | None
    export_accuracy: float | None
    criterion: str
    passed: bool
    unreadable: int = 0
    size_ratio: float | None = None  # int8: its size over the fp32 file's
    int8: bool = False
    agreement: float = 1.0  # the share of photos given PyTorch's class
    accuracy_change: float | None = None  # the file's accuracy minus PyTorch's, on the same labelled photos
    accuracy_change_se: float | None = None  # its paired standard error
    available: int = 0  # photos the source held, of which `photos` were compared

    def lines(self) -> list[str]:
        accuracy = "no labels (photos not in class folders)"
        if self.pytorch_accuracy is not None and self.export_accuracy is not None:
            accuracy = f"PyTorch {self.pytorch_accuracy:.4f}, {self.format} {self.export_accuracy:.4f}"
            if self.int8:
                used = (f"all {self.available}" if self.photos + self.unreadable >= self.available
                        else f"{self.photos} of the {self.available}")
                accuracy += f": {self._change()} on {used} labelled photos"
            else:
                accuracy += f" ({100 * (self.export_accuracy - self.pytorch_accuracy):+.2f} points)"
        agreement = f" (agreement {100 * self.agreement:.2f}%)" if self.int8 else ""
        lines = [f"verified {self.file} against PyTorch fp32 on {self.photos} photos of {self.source}"
                 + (f" ({self.unreadable} unreadable left out)" if self.unreadable else ""),
                 f"  largest probability difference: {self.max_prob_diff:.2e}",
                 f"  photos whose class differs: {self.class_differs}{agreement}",
                 f"  accuracy: {accuracy}"]
        if self.size_ratio is not None:
            lines.append(f"  size: {self.size_ratio:.2f}x the fp32 file's")
        lines.append(f"  {'passed' if self.passed else 'FAILED'}: {self.criterion}")
        return lines

    def _change(self) -> str:
        if self.accuracy_change is None:
            return "no change measured"
        if self.accuracy_change_se is None:
            return f"change {100 * self.accuracy_change:+.2f} points (one photo: no standard error)"
        return (f"change {100 * self.accuracy_change:+.2f} ± {100 * self.accuracy_change_se:.2f} points "
                "(paired standard error)")

    def summary(self) -> str:
        """The figures in one line, for a failure message."""
        if not self.int8:
            return (f"{self.photos} photos compared, largest probability difference {self.max_prob_diff:.2e}, "
                    f"{self.class_differs} with another class, accuracy PyTorch {_fmt(self.pytorch_accuracy)} "
                    f"vs {self.format} {_fmt(self.export_accuracy)}")
        accuracy = ""
        if self.pytorch_accuracy is not None and self.export_accuracy is not None:
            accuracy = (f", accuracy PyTorch {self.pytorch_accuracy:.4f} vs {self.format} "
                        f"{self.export_accuracy:.4f}, {self._change().removesuffix(' (paired standard error)')}")
        return (f"{self.photos} photos compared, largest probability difference {self.max_prob_diff:.2e}, "
                f"{self.class_differs} with another class (agreement {100 * self.agreement:.2f}%){accuracy}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class Photos:
    """Decoded photos for verification or calibration, with labels when they sit in class folders."""

    images: np.ndarray  # uint8 [N, size, size, 3]
    labels: np.ndarray | None
    source: str
    unreadable: int
    available: int  # photos the source held, of which these were taken


def run_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch]) for i in range(0, len(images), batch)])


def verify(exported: ExportedModel, reference: np.ndarray, photos: Photos, *, name: str,
           int8: bool = False) -> Verification:
    """Compare the exported file's probabilities with PyTorch's on the same decoded photos.

    fp32 must match exactly (every class, probabilities within PROB_TOLERANCE). int8 must give
    PyTorch's class on INT8_MIN_AGREEMENT of the photos, which also bounds its accuracy change.
    """
    probs = run_batches(lambda batch: exported.probabilities(torch.from_numpy(batch)).numpy(), photos.images)
    gap = float(np.abs(probs - reference).max())
    same = probs.argmax(1) == reference.argmax(1)
    differs, agreement = int((~same).sum()), float(same.mean())
    accuracies: list[float | None] = [None, None]
    change: tuple[float | None, float | None] = (None, None)
    if photos.labels is not None:
        right = [p.argmax(1) == photos.labels for p in (reference, probs)]
        accuracies = [float(r.mean()) for r in right]
        change = paired_accuracy_change(*right)
    if int8:
        passed = agreement >= INT8_MIN_AGREEMENT - 1e-12
        criterion = f"PyTorch's class on at least {100 * INT8_MIN_AGREEMENT:g}% of the photos"
    else:
        passed = differs == 0 and gap <= PROB_TOLERANCE
        criterion = f"every class equal and probabilities within {PROB_TOLERANCE:g}"
    fmt = "ONNX int8" if int8 else {"onnx": "ONNX", "torchscript": "TorchScript"}[exported.format]
    return Verification(file=name, format=fmt, photos=len(probs), source=photos.source, max_prob_diff=gap,
                        class_differs=differs, pytorch_accuracy=accuracies[0], export_accuracy=accuracies[1],
                        criterion=criterion, passed=passed, unreadable=photos.unreadable, int8=int8,
                        agreement=agreement, accuracy_change=change[0], accuracy_change_se=change[1],
                        available=photos.available)


def paired_accuracy_change(before: np.ndarray, after: np.ndarray) -> tuple[float, float | None]:
    """The accuracy change from `before` to `after` (per-photo correctness on the same photos) and its paired
    standard error: the sample standard deviation of the per-photo differences over sqrt(photos); None for
    one photo."""
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(differences) < 2:
        return float(differences.mean()), None
    return float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(len(differences)))


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most `n` items taken evenly across `items` (every class of a sorted folder, not just the first)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def verification_photos(trained: TrainedModel, *, verify_on: str | Path | None, limit: int) -> Photos:
    """The run's test photos, or those of `verify_on` (a folder of class folders gives labels too)."""
    size = trained.cfg.image_size
    if verify_on is None:
        try:
            split = read_split(trained.cfg.data, "test", trained.classes)
        except CatsdogsError as error:
            raise CatsdogsError(f"the run's test photos cannot be read ({error}); verify on other photos with "
                                "--verify-on FOLDER") from None
        return _decode(split.paths, labels=split.labels, size=size, limit=limit, source=str(split.root))
    folder = Path(verify_on)
    if not folder.is_dir():  # click lets a path that does not exist through
        raise UsageError(f"--verify-on {folder} is not a folder of photos")
    if set(class_folders(folder)) & set(trained.classes):
        split = read_class_folder(folder, trained.classes, some_classes=True)
        return _decode(split.paths, labels=split.labels, size=size, limit=limit, source=str(folder))
    return _decode(collect_photos([folder]), labels=None, size=size, limit=limit, source=str(folder))


def calibration_photos(trained: TrainedModel) -> Photos:
    try:
        split = read_split(trained.cfg.data, "train", trained.classes)
    except CatsdogsError as error:
        raise CatsdogsError(f"int8 calibration needs the run's training photos: {error}") from None
    return _decode(split.paths, labels=None, size=trained.cfg.image_size, limit=CALIBRATION_N,
                   source=str(split.root))


def _decode(paths: Sequence[Path], *, labels: np.ndarray | None, size: int, limit: int, source: str) -> Photos:
    chosen = spread(range(len(paths)), limit)
    images, kept, unreadable = [], [], 0
    for index, (_, image) in zip(chosen, decode_photos([paths[i] for i in chosen], size)):
        if isinstance(image, str):
            unreadable += 1
            continue
        images.append(image)
        kept.append(index)
    if not images:
        raise CatsdogsError(f"none of the {len(chosen)} photos of {source} could be read")
    return Photos(images=np.stack(images), labels=None if labels is None else np.asarray(labels)[kept],
                  source=source, unreadable=unreadable, available=len(paths))


def read_verifications(folder: Path) -> dict[str, Any]:
    """The figures that earlier exports recorded in `folder`'s verification.json, by file name ({} without one).

    Ours carries `written_by`; a file of older catsdogs (the figures by file name, nothing else) is
    ours too. Anything else there (another program's JSON, not JSON, not an object) is refused.
    """
    path = folder / VERIFICATION_FILE
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("written_by") == WRITTEN_BY and isinstance(record.get("files"), dict):
        return record["files"]
    if isinstance(record, dict) and record and all(  # as catsdogs wrote it before the mark
            isinstance(entry, dict) and entry.get("file") == name and {"format", "criterion", "passed"} <= set(entry)
            for name, entry in record.items()):
        return record
    raise CatsdogsError(f"{path} was not written by catsdogs export, which records its figures there: move it "
                        "away, or export into another folder")


def record_verification(folder: Path, check: Verification) -> None:
    """verification.json in `folder`: one entry per exported file name, the latest figures of each."""
    files = read_verifications(folder)
    files[check.file] = dataclasses.asdict(check)
    record = {"written_by": WRITTEN_BY, "catsdogs_version": __version__, "files": files}
    write_text_atomic(folder / VERIFICATION_FILE, json.dumps(record, indent=2) + "\n")

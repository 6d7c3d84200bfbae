"""Evaluating a trained run on a split: metrics.json, a confusion-matrix figure, predictions.csv."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs.atomic import write_text_atomic
from catsdogs.data.cache import (SPLITS, BatchSource, ImageSplit, class_folders, load_cache, read_class_folder,
                                 read_split, split_fingerprint)
from catsdogs.data.staging import MANIFEST
from catsdogs.data.transforms import eval_preset
from catsdogs.errors import CatsdogsError
from catsdogs.figures import pyplot, save_figure
from catsdogs.inference.calibration import expected_calibration_error
from catsdogs.inference.metrics import compute_metrics
from catsdogs.inference.predict import TrainedModel, check_image_size, load_trained
from catsdogs.names import escape_names, unescape_name
from catsdogs.training.runs import RunFolder
from catsdogs.training.scoring import evaluate_source, tta_mode


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    metrics_path: Path
    figure_path: Path
    predictions_path: Path


def evaluate_run(run_dir: str | Path, split: str = "test", checkpoint: str = "best", data: str | None = None,
                 device: str = "auto", progress: bool = True, tta: bool | str = False,
                 out_dir: str | Path | None = None, image_size: int | None = None) -> Evaluation:
    """Run a checkpoint of `run_dir` on a split and write the metrics and figures into `out_dir`.

    `data` is a split folder, or a folder holding just the model's class subfolders: then every
    photo in it is measured (`split` is ignored and recorded as "all").

    `out_dir` defaults to the run folder for the data it trained on, and to
    `run_dir/eval-<folder name>` for other data (`eval-<name>-2` and so on when that holds the
    results of another folder of the same name), so that measuring a model on new photos never
    replaces another measurement. Files that are not this evaluation's earlier results are never
    replaced. With `tta` (True or "flip") the prediction averages each image and its mirror image;
    its files get a `_tta` suffix so they sit beside the plain ones. "flip-shift" averages six views
    (catsdogs.training.scoring.tta_views), suffix `_tta-flip-shift`.

    `image_size` measures at another side than the run's last training size (FixRes: a model trained
    on random crops often does better a little above it): the photos are decoded at that size and the
    files get a `_<size>px` suffix, so they never replace the results at the trained size. Sizes the
    model cannot take are refused (see catsdogs.inference.predict.check_image_size).
    """
    tta = tta_mode(tta)
    run_dir = Path(run_dir)
    if data is not None and not Path(data).is_dir():
        raise CatsdogsError(f"--data {data} {'is not a folder' if Path(data).exists() else 'does not exist'}: pass "
                            "a split folder, or a folder with one subfolder of photos per class")
    trained = load_trained(run_dir, checkpoint, device)
    cfg, classes = trained.cfg, trained.classes
    size = check_image_size(trained, image_size)
    trained_on = Path(cfg.data).resolve()
    measured = Path(data).resolve() if data is not None else trained_on
    own_split = measured == trained_on
    plain = data is not None and is_plain_class_folder(Path(data), classes)
    split = "all" if plain else split
    suffix = results_suffix(split, checkpoint, None if size == cfg.image_size else size, tta)
    out_dir = _choose_out_dir(run_dir, out_dir, checkpoint, suffix, (measured, trained.checkpoint.resolve()),
                              trained_on, own_split)
    image_split, images = _open_photos(measured, split, trained, plain, progress, size)
    warning = changed_split_warning(trained.data_fingerprint, cfg.data, classes, own_split)
    metrics, read, kept, probs, labels = _measure(trained, image_split, images, progress, tta, size)
    metrics.update({"split": split, "image_size": size, "loss": read["loss"],
                    "checkpoint": str(trained.checkpoint.resolve()),
                    "tta": bool(tta), "tta_mode": tta or None, "data": str(measured), "epoch": trained.epoch,
                    "unreadable_images": read["unreadable_images"], "left_out": read["left_out"]})
    if not own_split:
        seen = seen_in_training(kept, cfg.data)
        metrics["seen_in_training"] = seen
        if seen:
            warning = (f"{seen} of these {len(kept)} photos are in the train or val split this run learned from "
                       "(the same bytes), so this accuracy is too high; measure on photos the run never saw")
    if warning:
        metrics["warning"] = warning
    return _write_results(out_dir, suffix, metrics, run_dir, kept, labels, probs, classes)


def _choose_out_dir(run_dir: Path, out_dir: str | Path | None, checkpoint: str, suffix: str,
                    evaluation: tuple[Path, Path], trained_on: Path, own_split: bool) -> Path:
    """Where the results go (see evaluate_run), checked before any work: never over results of another
    evaluation, `evaluation` being (the photos measured, the checkpoint)."""
    measured = evaluation[0]
    if out_dir is not None:
        out_dir = Path(out_dir).resolve()  # `new/..` must be judged where it lands, not as a missing folder
        _check_out(out_dir, run_dir, [measured, trained_on, *_class_folders_of(measured)], own_split)
        refuse_to_replace(out_dir, suffix, evaluation)
    elif own_split:
        out_dir = run_dir
        if checkpoint not in ("best", "last"):  # two files named best.pt share a suffix
            refuse_to_replace(out_dir, suffix, evaluation)
    else:
        out_dir = free_output_dir(RunFolder(run_dir).eval_dir(measured.name), measured)
        refuse_to_replace(out_dir, suffix, evaluation)
    return out_dir


def _open_photos(measured: Path, split: str, trained: TrainedModel, plain: bool, progress: bool,
                 size: int) -> tuple[ImageSplit, np.ndarray | None]:
    """The photos to measure, and their decoded cache at `size` (None: decoded as read)."""
    if plain:
        # Photos sorted into class folders but not split: measure on all of them, and leave no
        # cache behind in a folder that is the user's own.
        return read_class_folder(measured, trained.classes, some_classes=True), None
    image_split = read_split(measured, split, trained.classes)
    # A run saved before --cache rebuild acted only once may hold rebuild: evaluating never rebuilds.
    cache = "off" if trained.cfg.cache == "off" else "auto"
    return image_split, load_cache(image_split, size, cache, progress=progress)


def _measure(trained: TrainedModel, image_split: ImageSplit, images: np.ndarray | None, progress: bool,
             tta: str | None, size: int) -> tuple[dict[str, Any], dict[str, Any], list[Path], np.ndarray, np.ndarray]:
    """Run the model on the photos at `size`: their metrics; the loss and the photos it could not read or
    left out; the photos it read, its probabilities and their labels."""
    torch_device = trained.device
    source = BatchSource(image_split, eval_preset(size), images, workers=0 if images is not None else 1,
                         device=torch_device)
    loss, _, probs, labels = evaluate_source(trained.model, source, trained.precision, torch_device, show=progress,
                                             tta=tta)
    metrics = compute_metrics(probs, labels, trained.classes)
    metrics["ece"] = expected_calibration_error(probs, labels)  # confidence against accuracy, 15 bins
    failed = set(source.failed)
    unreadable = sorted(str(p) for p in set(image_split.unreadable) | failed)
    kept = [image_split.paths[i] for i in source.valid if image_split.paths[i] not in failed]
    read = {"loss": loss, "unreadable_images": unreadable,
            "left_out": [{"path": str(path), "reason": reason} for path, reason in image_split.left_out]}
    return metrics, read, kept, probs, labels


def _write_results(out_dir: Path, suffix: str, metrics: dict[str, Any], run_dir: Path, kept: list[Path],
                   labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> Evaluation:
    """metrics.json, the confusion-matrix figure and predictions.csv, each with `suffix`."""
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed evaluation leaves no empty folder
    metrics_path, figure_path, predictions_path = _result_files(out_dir, suffix)
    save_confusion_figure(np.asarray(metrics["confusion_matrix"]), classes, figure_path,
                          title=f"{run_dir.name}: {metrics['split']} accuracy {metrics['accuracy']:.3f}")
    write_predictions(predictions_path, kept, labels, probs, classes)
    # Last, as the mark of a whole evaluation: a process killed before it leaves no metrics.json (or an older
    # one, older than best.pt), so a study's retried run evaluates again instead of keeping half of one.
    write_text_atomic(metrics_path, json.dumps(escape_names(metrics), indent=2) + "\n")
    return Evaluation(metrics, metrics_path, figure_path, predictions_path)


def _result_files(folder: Path, suffix: str) -> list[Path]:
    return list(RunFolder(folder).result_files(suffix))


def _evaluation_in(metrics_file: Path) -> tuple[Path, Path] | None:
    """The (photo folder, checkpoint) an earlier `evaluate` recorded in `metrics_file`; None when it is
    not one of ours."""
    try:
        recorded = json.loads(metrics_file.read_text(encoding="utf-8"))
        if "confusion_matrix" not in recorded:
            return None
        # Names written escaped where they are not UTF-8 (see catsdogs.names): the folders' own again.
        return Path(unescape_name(recorded["data"])).resolve(), Path(unescape_name(recorded["checkpoint"])).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _class_folders_of(folder: Path) -> list[Path]:
    """The real places of a folder's class subfolders (links included)."""
    return [sub.resolve() for sub in folder.iterdir() if sub.is_dir()] if folder.is_dir() else []


def _check_out(out_dir: Path, run_dir: Path, photo_folders: list[Path], own_split: bool) -> None:
    """--out (resolved) may not lie among photos (those measured, and the run's split, which must
    stay untouched) nor be a run folder other than this run's own evaluation place (its
    metrics.json is what `explain --mistakes` reads)."""
    for photos in photo_folders:
        if out_dir == photos or out_dir.is_relative_to(photos):
            raise CatsdogsError(f"--out {out_dir} is inside {photos}, a folder of photos that must stay as it "
                                "is: choose a folder outside it")
    is_run = RunFolder(out_dir).looks_like_run()
    if is_run and not (out_dir == run_dir.resolve() and own_split):
        raise CatsdogsError(f"--out {out_dir} is a run folder, whose metrics.json is its own evaluation: choose "
                            "another --out")


def refuse_to_replace(folder: Path, suffix: str, evaluation: tuple[Path, Path]) -> None:
    """Refuse a results folder where writing would replace anything but an earlier evaluation of
    the same checkpoint on the same photos (a file of the user's, another run's results)."""
    if not any(path.exists() for path in _result_files(folder, suffix)):
        return
    metrics_file = _result_files(folder, suffix)[0]
    before = _evaluation_in(metrics_file)
    if before is None:
        clash = next(path for path in _result_files(folder, suffix) if path.exists())
        raise CatsdogsError(f"{clash} exists and is not a result of `catsdogs evaluate`: choose another --out, "
                            "or move it")
    if before != evaluation:
        raise CatsdogsError(f"{folder} already holds the evaluation of {before[1]} on {before[0]} "
                            f"({metrics_file.name}): choose another --out")


def free_output_dir(base: Path, measured: Path) -> Path:
    """`base`, or `base-2`, `base-3`...: the first that is new, empty, or holds only results on the
    photos in `measured` (other checkpoints and --tta sit there beside each other, by suffix)."""
    for number in itertools.count(1):
        folder = base if number == 1 else base.with_name(f"{base.name}-{number}")
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return folder
        recorded = {_evaluation_in(path) for path in RunFolder(folder).all_metrics()}
        if folder.is_dir() and None not in recorded and {data for data, _ in recorded} == {measured}:
            return folder
    raise AssertionError("unreachable")


def seen_in_training(photos: list[Path], trained_on: str | Path) -> int | None:
    """How many of `photos` have the bytes of a train or val photo in the run's split manifest
    (None when the manifest is gone)."""
    try:
        # surrogateescape: a manifest of an older split may hold names that are not UTF-8.
        with (Path(trained_on) / MANIFEST).open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
            learned = {row["sha256"] for row in csv.DictReader(handle) if row["split"] in ("train", "val")}
    except (OSError, KeyError, csv.Error):
        return None
    count = 0
    for photo in photos:
        try:
            count += hashlib.sha256(photo.read_bytes()).hexdigest() in learned
        except OSError:
            continue
    return count


def results_suffix(split: str, checkpoint: str, image_size: int | None, tta: str | None) -> str:
    """The suffix of an evaluation's files: `_<split>` but for test (and "all"), the checkpoint's,
    `_<size>px` for a size other than the trained one (None), then `_tta` or `_tta-<mode>`."""
    return (("" if split in ("test", "all") else f"_{split}") + checkpoint_suffix(checkpoint)
            + ("" if image_size is None else f"_{image_size}px")
            + ("" if not tta else "_tta" if tta == "flip" else f"_tta-{tta}"))


def checkpoint_suffix(checkpoint: str) -> str:
    """"" for best.pt (the model a run is measured by), `_last`, or `_<file stem>` for another file."""
    if checkpoint == "best":
        return ""
    return "_last" if checkpoint == "last" else f"_{Path(checkpoint).stem}"


def changed_split_warning(saved: dict[str, str | None] | None, data: str | Path, classes: list[str],
                          own_data: bool) -> str | None:
    """A warning when the run's own split folder was split again after the run was trained.

    Its train and val file lists then differ from the ones recorded at training time, and the
    test photos may include some the model trained on.
    """
    if not own_data or not saved:
        return None
    try:
        now = {name: split_fingerprint(read_split(data, name, classes)) for name in ("train", "val")}
    except CatsdogsError:
        return f"{data} no longer holds the train/val split this run was trained with; check the test photos"
    if all(now[name] == saved.get(name) for name in now):
        return None
    return (f"{data} has been split again since this run was trained (its train/val photos differ): some "
            "test photos may have been in training, so this accuracy may be too high")


def is_plain_class_folder(folder: Path, classes: list[str]) -> bool:
    """True for a folder of class subfolders (Cat/, Dog/, or some of the model's classes) rather
    than a split folder; other subfolders are refused naming both sets of classes."""
    if not folder.is_dir() or any((folder / name).is_dir() for name in SPLITS):
        return False
    found = class_folders(folder)
    if found and set(found) <= set(classes):
        return True
    if found:
        raise CatsdogsError(f"{folder} has class folders {found}, but the model knows {sorted(classes)}: name the "
                            "subfolders after the model's classes (case matters), or pass a split folder")
    raise CatsdogsError(f"{folder} has no class subfolders ({', '.join(classes)}) and no {'/, '.join(SPLITS)}/ "
                        "folders: sort the photos into one subfolder per class, or use `catsdogs predict`")


def write_predictions(path: Path, paths: list[Path], labels: np.ndarray, probs: np.ndarray,
                      classes: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "predicted", *[f"p_{c}" for c in classes]])
    for file, label, row in zip(paths, labels, probs):
        writer.writerow([str(file), classes[label], classes[int(row.argmax())], *[f"{p:.6f}" for p in row]])
    write_text_atomic(path, buffer.getvalue())


def save_confusion_figure(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    size = 1.2 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    peak = matrix.max() or 1
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    save_figure(fig, path, dpi=120)

"""Evaluating a trained run on a split: metrics.json, a confusion-matrix figure, predictions.csv."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs.checkpoint import write_text_atomic
from catsdogs.data import (SPLITS, BatchSource, class_folders, load_cache, read_class_folder, read_split,
                           split_fingerprint)
from catsdogs.errors import CatsdogsError
from catsdogs.loop import evaluate_source
from catsdogs.predict import load_trained
from catsdogs.transforms import eval_preset


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Correct predictions over all predictions: a fraction between 0 and 1."""
    return float((np.asarray(predicted) == np.asarray(labels)).mean()) if len(labels) else 0.0


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC as the probability that a positive outranks a negative (ties count half)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties so equal scores contribute one half.
    unique, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def compute_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix and ROC AUC."""
    predicted = probs.argmax(1)
    matrix = confusion_matrix(predicted, labels, len(classes))
    per_class = {}
    for index, name in enumerate(classes):
        tp = matrix[index, index]
        precision = tp / matrix[:, index].sum() if matrix[:, index].sum() else 0.0
        recall = tp / matrix[index, :].sum() if matrix[index, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(matrix[index, :].sum())}
    macro = {key: float(np.mean([m[key] for m in per_class.values()])) for key in ("precision", "recall", "f1")}
    if len(classes) == 2:
        auc = binary_auc(probs[:, 1], labels == 1)
    else:  # macro one-vs-rest
        aucs = [binary_auc(probs[:, i], labels == i) for i in range(len(classes))]
        aucs = [a for a in aucs if a is not None]
        auc = float(np.mean(aucs)) if aucs else None
    return {"accuracy": accuracy(predicted, labels), "images": int(len(labels)), "classes": list(classes),
            "per_class": per_class, "macro": macro, "confusion_matrix": matrix.tolist(), "roc_auc": auc}


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    metrics_path: Path
    figure_path: Path
    predictions_path: Path


def evaluate_run(run_dir: str | Path, split: str = "test", checkpoint: str = "best", data: str | None = None,
                 device: str = "auto", progress: bool = True, tta: bool = False,
                 out_dir: str | Path | None = None) -> Evaluation:
    """Run a checkpoint of `run_dir` on a split and write the metrics and figures into `out_dir`.

    `data` is a split folder, or a folder holding just the model's class subfolders: then every
    photo in it is measured (`split` is ignored and recorded as "all").

    `out_dir` defaults to the run folder for the data it trained on, and to
    `run_dir/eval-<folder name>` for other data, so that measuring a model on new photos never
    replaces the measurement on its own test split. With `tta` the prediction averages each
    image and its mirror image; its files get a `_tta` suffix so they sit beside the plain ones.
    """
    run_dir = Path(run_dir)
    trained = load_trained(run_dir, checkpoint, device)
    cfg, classes, torch_device = trained.cfg, trained.classes, trained.device
    out_dir = Path(out_dir) if out_dir is not None else default_output_dir(run_dir, cfg.data, data)
    if data is not None and is_plain_class_folder(Path(data), classes):
        # Photos sorted into class folders but not split: measure on all of them, and leave no
        # cache behind in a folder that is the user's own.
        split = "all"
        image_split = read_class_folder(data, classes, some_classes=True)
        images = None
    else:
        image_split = read_split(data or cfg.data, split, classes)
        images = load_cache(image_split, cfg.image_size, cfg.cache, progress=progress)
    warning = changed_split_warning(trained.data_fingerprint, cfg.data, classes, data is None)
    source = BatchSource(image_split, eval_preset(cfg.image_size), images, workers=0 if images is not None else 1,
                         device=torch_device)
    loss, _, probs, labels = evaluate_source(trained.model, source, trained.precision, torch_device, show=progress,
                                             tta=tta)
    metrics = compute_metrics(probs, labels, classes)
    failed = set(source.failed)
    unreadable = sorted(str(p) for p in set(image_split.unreadable) | failed)
    metrics.update({"split": split, "loss": loss, "checkpoint": str(trained.checkpoint.resolve()), "tta": tta,
                    "data": str(data or cfg.data), "epoch": trained.epoch, "unreadable_images": unreadable})
    if warning:
        metrics["warning"] = warning
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed evaluation leaves no empty folder
    suffix = ("" if split in ("test", "all") else f"_{split}") + checkpoint_suffix(checkpoint)
    suffix += "_tta" if tta else ""
    metrics_path = out_dir / f"metrics{suffix}.json"
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    figure_path = out_dir / f"confusion_matrix{suffix}.png"
    save_confusion_figure(np.asarray(metrics["confusion_matrix"]), classes, figure_path,
                          title=f"{run_dir.name}: {split} accuracy {metrics['accuracy']:.3f}")
    predictions_path = out_dir / f"predictions{suffix}.csv"
    kept = [image_split.paths[i] for i in source.valid if image_split.paths[i] not in failed]
    write_predictions(predictions_path, kept, labels, probs, classes)
    return Evaluation(metrics, metrics_path, figure_path, predictions_path)


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


def default_output_dir(run_dir: Path, trained_on: str, data: str | None) -> Path:
    """The run folder for the run's own split folder; `run_dir/eval-<name>` for any other."""
    if data is None or Path(data).resolve() == Path(trained_on).resolve():
        return run_dir
    return run_dir / f"eval-{Path(data).resolve().name}"


def write_predictions(path: Path, paths: list[Path], labels: np.ndarray, probs: np.ndarray,
                      classes: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "predicted", *[f"p_{c}" for c in classes]])
    for file, label, row in zip(paths, labels, probs):
        writer.writerow([str(file), classes[label], classes[int(row.argmax())], *[f"{p:.6f}" for p in row]])
    write_text_atomic(path, buffer.getvalue())


def save_confusion_figure(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_metrics(metrics: dict[str, Any]) -> str:
    """A readable table of the metrics for the terminal."""
    lines = [f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'images':>8}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<12}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>8}")
    macro = metrics["macro"]
    lines.append(f"{'macro':<12}{macro['precision']:>10.4f}{macro['recall']:>10.4f}{macro['f1']:>10.4f}"
                 f"{metrics['images']:>8}")
    auc = metrics["roc_auc"]
    lines.append(f"accuracy {metrics['accuracy']:.4f} ({metrics['images']} images)"
                 + (f"   ROC AUC {auc:.4f}" if auc is not None else ""))
    lines.append("confusion matrix (rows true, columns predicted): " + str(metrics["confusion_matrix"]))
    return "\n".join(lines)

"""Evaluating a trained run on a split: metrics.json, a confusion-matrix figure, predictions.csv."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catsdogs.checkpoint import load_checkpoint, write_text_atomic
from catsdogs.config import config_from_dict
from catsdogs.data import BatchSource, load_cache, read_split
from catsdogs.errors import CatsdogsError
from catsdogs.hardware import select_device, select_precision, tune_allocator
from catsdogs.models import build_model
from catsdogs.runs import resolve_checkpoint
from catsdogs.loop import evaluate_source
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
                 device: str = "auto", progress: bool = True, tta: bool = False) -> Evaluation:
    """Run a checkpoint of `run_dir` on a split and write the metrics and figures into `run_dir`.

    With `tta` the prediction averages each image and its mirror image; its files get a `_tta`
    suffix so they sit beside the plain evaluation instead of replacing it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CatsdogsError(f"run folder {run_dir} does not exist")
    checkpoint_path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(checkpoint_path)
    cfg = config_from_dict(state["config"], str(checkpoint_path))
    classes = list(state["classes"])
    torch_device = select_device(device)
    precision = select_precision(cfg.precision, torch_device)
    tune_allocator()
    model = build_model(cfg.model, len(classes), cfg.image_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise CatsdogsError(f"{checkpoint_path}: its weights do not fit model {cfg.model} "
                            f"at {cfg.image_size}px") from None
    model = model.to(torch_device, memory_format=torch.channels_last)
    image_split = read_split(data or cfg.data, split, classes)
    images = load_cache(image_split, cfg.image_size, cfg.cache, progress=progress)
    source = BatchSource(image_split, eval_preset(cfg.image_size), images, workers=0 if images is not None else 1,
                         device=torch_device)
    loss, _, probs, labels = evaluate_source(model, source, precision, torch_device, show=progress, tta=tta)
    metrics = compute_metrics(probs, labels, classes)
    metrics.update({"split": split, "loss": loss, "checkpoint": str(checkpoint_path), "tta": tta,
                    "data": str(data or cfg.data), "epoch": state.get("epoch")})
    suffix = ("" if split == "test" else f"_{split}") + ("_tta" if tta else "")
    metrics_path = run_dir / f"metrics{suffix}.json"
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    figure_path = run_dir / f"confusion_matrix{suffix}.png"
    save_confusion_figure(np.asarray(metrics["confusion_matrix"]), classes, figure_path,
                          title=f"{run_dir.name}: {split} accuracy {metrics['accuracy']:.3f}")
    predictions_path = run_dir / f"predictions{suffix}.csv"
    failed = set(source.failed)
    kept = [image_split.paths[i] for i in source.valid if image_split.paths[i] not in failed]
    write_predictions(predictions_path, kept, labels, probs, classes)
    return Evaluation(metrics, metrics_path, figure_path, predictions_path)


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

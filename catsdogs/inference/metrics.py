"""Classification metrics from predicted probabilities, and their table for the terminal."""

from __future__ import annotations

from typing import Any

import numpy as np

from catsdogs.training.scoring import accuracy, balanced_accuracy


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
    """Accuracy, balanced accuracy, the majority-class baseline, per-class and macro precision/recall/F1,
    confusion matrix and ROC AUC.

    A class without photos here (measuring on photos of only some classes) has no recall or F1
    (None), and the macro averages and the balanced accuracy are over the classes that have photos,
    so an absent class does not count as a failure.
    """
    predicted = probs.argmax(1)
    matrix = confusion_matrix(predicted, labels, len(classes))
    per_class: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(classes):
        tp, support, called = matrix[index, index], int(matrix[index, :].sum()), int(matrix[:, index].sum())
        precision = tp / called if called else (0.0 if support else None)
        recall = tp / support if support else None
        if recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": _float(precision), "recall": _float(recall), "f1": _float(f1),
                           "support": support}
    present = [m for m in per_class.values() if m["support"]]
    macro = {key: float(np.mean([m[key] for m in present])) if present else 0.0
             for key in ("precision", "recall", "f1")}
    if len(classes) == 2:
        auc = binary_auc(probs[:, 1], labels == 1)
    else:  # macro one-vs-rest
        aucs = [binary_auc(probs[:, i], labels == i) for i in range(len(classes))]
        aucs = [a for a in aucs if a is not None]
        auc = float(np.mean(aucs)) if aucs else None
    supports = matrix.sum(1)
    majority = int(supports.argmax())
    return {"accuracy": accuracy(predicted, labels), "images": int(len(labels)), "classes": list(classes),
            "balanced_accuracy": balanced_accuracy(predicted, labels, len(classes)),
            "majority_baseline": {"class": classes[majority],
                                  "accuracy": float(supports[majority] / len(labels)) if len(labels) else 0.0},
            "per_class": per_class, "macro": macro, "confusion_matrix": matrix.tolist(), "roc_auc": auc}


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def is_unbalanced(metrics: dict[str, Any]) -> bool:
    """Whether one class has clearly more photos than an equal share (60/40 or worse for two)."""
    present = sum(1 for m in metrics["per_class"].values() if m["support"])
    return present > 1 and metrics["majority_baseline"]["accuracy"] >= 1 / present + 0.1


def format_metrics(metrics: dict[str, Any]) -> str:
    """A readable table of the metrics for the terminal."""
    width = max(12, *(len(name) + 2 for name in metrics["per_class"]))

    def cell(value: float | None) -> str:
        return f"{'—':>10}" if value is None else f"{value:>10.4f}"

    lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'images':>8}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}}{cell(m['precision'])}{cell(m['recall'])}{cell(m['f1'])}{m['support']:>8}")
    macro = metrics["macro"]
    lines.append(f"{'macro':<{width}}{cell(macro['precision'])}{cell(macro['recall'])}{cell(macro['f1'])}"
                 f"{metrics['images']:>8}")
    absent = [name for name, m in metrics["per_class"].items() if not m["support"]]
    if absent:
        lines.append(f"(no photos of {', '.join(absent)} here: the macro averages are over the other classes)")
    auc = metrics["roc_auc"]
    lines.append(f"accuracy {metrics['accuracy']:.4f} ({metrics['images']} images)"
                 + (f"   balanced accuracy {metrics['balanced_accuracy']:.4f}" if "balanced_accuracy" in metrics
                    else "") + (f"   ROC AUC {auc:.4f}" if auc is not None else "")
                 + (f"   calibration error (ECE) {metrics['ece']:.4f}" if metrics.get("ece") is not None else ""))
    if "majority_baseline" in metrics and is_unbalanced(metrics):
        baseline = metrics["majority_baseline"]
        lines.append(f"unbalanced classes: always answering {baseline['class']} would score "
                     f"{baseline['accuracy']:.4f}; balanced accuracy (the mean recall) is not fooled by that")
    lines.append("confusion matrix (rows true, columns predicted): " + str(metrics["confusion_matrix"]))
    return "\n".join(lines)


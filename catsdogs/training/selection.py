"""Which epoch of a run is its best: the rule train saves best.pt by, and a study reports and tunes by."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def selected_by(class_weights: str) -> str:
    """The history column a run's best epoch is chosen by: balanced accuracy when rare classes are to
    count as much as common ones (--class-weights balanced), accuracy otherwise."""
    return "val_balanced_acc" if class_weights == "balanced" else "val_acc"


def _selection_key(row: Mapping[str, Any], column: str) -> tuple[float, float]:
    value = row.get(column)
    if value is None or math.isnan(value):  # a history written before catsdogs recorded the column
        value = row["val_acc"]
    loss = row["val_loss"]
    return value, -math.inf if math.isnan(loss) else -loss


def better_epoch(row: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]], column: str = "val_acc") -> bool:
    """Whether this epoch beats every earlier one: a higher `column`, or the same and a lower val loss.

    Ties are common where one class dominates: a model answering the larger class scores the same
    accuracy for many epochs while it learns, and the loss tells the later, better one apart.
    """
    return all(_selection_key(row, column) > _selection_key(other, column) for other in earlier)


def best_epoch(history: Sequence[Mapping[str, Any]], column: str = "val_acc") -> Mapping[str, Any]:
    """The row that `better_epoch` keeps as the best (the first to reach the highest `column`, ties
    going to the lower val loss): the epoch train saves as best.pt, and what a study reports and tunes by."""
    if not history:
        raise ValueError("best_epoch() needs at least one epoch")
    return max(history, key=lambda row: _selection_key(row, column))  # max keeps the first of equals

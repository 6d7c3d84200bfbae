"""The best-epoch rule: best.pt, early stopping and a study's report all choose by it."""

from __future__ import annotations

from catsdogs.training.selection import best_epoch, better_epoch, selected_by


def test_of_epochs_with_the_same_val_accuracy_the_lower_loss_is_the_best() -> None:
    first = {"val_acc": 0.84, "val_loss": 0.52}  # an unbalanced val split: the larger class is 84%
    assert better_epoch(first, [])
    assert better_epoch({"val_acc": 0.84, "val_loss": 0.41}, [first])  # the same answers, but learning
    assert not better_epoch({"val_acc": 0.84, "val_loss": 0.52}, [first])  # an exact tie keeps the earlier
    assert not better_epoch({"val_acc": 0.83, "val_loss": 0.10}, [first])  # accuracy first
    assert better_epoch({"val_acc": 0.85, "val_loss": 0.90}, [first, {"val_acc": 0.84, "val_loss": 0.41}])
    assert not better_epoch({"val_acc": 0.84, "val_loss": float("nan")}, [first])  # a diverged loss never wins


def test_with_balanced_class_weights_the_best_epoch_is_the_best_balanced_accuracy() -> None:
    history = [{"epoch": 1, "val_acc": 0.857, "val_balanced_acc": 0.500, "val_loss": 0.50},  # all the larger class
               {"epoch": 2, "val_acc": 0.700, "val_balanced_acc": 0.725, "val_loss": 0.70},
               {"epoch": 3, "val_acc": 0.690, "val_balanced_acc": 0.725, "val_loss": 0.65},  # tie: lower loss
               {"epoch": 4, "val_acc": 0.720, "val_balanced_acc": 0.725, "val_loss": 0.65}]  # exact tie: earlier
    assert best_epoch(history, selected_by("balanced"))["epoch"] == 3
    assert best_epoch(history, selected_by("none"))["epoch"] == 1


def test_a_history_without_balanced_accuracy_is_judged_by_accuracy() -> None:
    older = [{"epoch": 1, "val_acc": 0.6, "val_loss": 0.5}, {"epoch": 2, "val_acc": 0.7, "val_loss": 0.6},
             {"epoch": 3, "val_acc": 0.65, "val_balanced_acc": float("nan"), "val_loss": 0.4}]
    assert best_epoch(older, "val_balanced_acc")["epoch"] == 2

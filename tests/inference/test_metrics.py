"""The metric functions, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from catsdogs.inference.metrics import accuracy, binary_auc, compute_metrics, confusion_matrix, format_metrics


def test_accuracy_is_a_fraction_of_correct_predictions() -> None:
    assert accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75
    assert accuracy(np.array([1, 1]), np.array([1, 1])) == 1.0
    assert accuracy(np.array([1, 0, 1]), np.array([0, 1, 0])) == 0.0


def test_accuracy_of_nothing_is_zero() -> None:
    assert accuracy(np.array([], dtype=int), np.array([], dtype=int)) == 0.0


def test_confusion_matrix_rows_are_true_classes_columns_predictions() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    assert confusion_matrix(predicted, labels, 3).tolist() == [[1, 2, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_keeps_classes_nobody_predicted() -> None:
    assert confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2).tolist() == [[1, 0], [1, 0]]


@pytest.mark.parametrize(("scores", "positive", "expected"), [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),  # every positive above every negative
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),  # every positive below every negative
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied: each pair counts half
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 0.35 beats 0.1 not 0.4; 0.8 beats both: 3 of 4 pairs
    ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 0.875),  # 0.5~0.5 half, 0.5>0.2, 0.9 beats both: 3.5 of 4
    ([0.3, 0.6, 0.6, 0.6, 0.1], [1, 1, 0, 0, 0], 0.5),  # 0.3: beats 0.1 (1); 0.6: ties 2 (1), beats 0.1 (1): 3 of 6
])
def test_binary_auc_by_hand(scores: list[float], positive: list[int], expected: float) -> None:
    assert binary_auc(np.array(scores), np.array(positive)) == pytest.approx(expected)


def test_binary_auc_is_undefined_with_one_class() -> None:
    assert binary_auc(np.array([0.2, 0.7]), np.array([1, 1])) is None
    assert binary_auc(np.array([0.2, 0.7]), np.array([0, 0])) is None


def two_class_example() -> tuple[np.ndarray, np.ndarray]:
    # Three cats, three dogs; one cat is called a dog. P(dog) ranks: cats 0.1, 0.3, 0.6; dogs 0.55, 0.8, 0.9.
    p_dog = np.array([0.1, 0.3, 0.6, 0.55, 0.8, 0.9])
    probs = np.stack([1 - p_dog, p_dog], axis=1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    return probs, labels


def test_compute_metrics_per_class_by_hand() -> None:
    probs, labels = two_class_example()
    metrics = compute_metrics(probs, labels, ["Cat", "Dog"])
    assert metrics["confusion_matrix"] == [[2, 1], [0, 3]]
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    assert metrics["images"] == 6 and metrics["classes"] == ["Cat", "Dog"]
    cat, dog = metrics["per_class"]["Cat"], metrics["per_class"]["Dog"]
    # Cat: 2 predicted cats, both right; 2 of 3 cats found.
    assert cat["precision"] == pytest.approx(1.0)
    assert cat["recall"] == pytest.approx(2 / 3)
    assert cat["f1"] == pytest.approx(0.8)
    assert cat["support"] == 3
    # Dog: 4 predicted dogs, 3 right; all 3 dogs found.
    assert dog["precision"] == pytest.approx(0.75)
    assert dog["recall"] == pytest.approx(1.0)
    assert dog["f1"] == pytest.approx(6 / 7)
    assert dog["support"] == 3
    assert metrics["macro"]["precision"] == pytest.approx(0.875)
    assert metrics["macro"]["recall"] == pytest.approx(5 / 6)
    assert metrics["macro"]["f1"] == pytest.approx((0.8 + 6 / 7) / 2)
    # AUC of P(dog): only the cat at 0.6 outranks a dog (0.55): 8 of 9 pairs.
    assert metrics["roc_auc"] == pytest.approx(8 / 9)


def test_a_class_never_predicted_has_zero_precision_not_nan() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    metrics = compute_metrics(probs, np.array([0, 1, 1]), ["Cat", "Dog"])
    dog = metrics["per_class"]["Dog"]
    assert (dog["precision"], dog["recall"], dog["f1"]) == (0.0, 0.0, 0.0)
    assert metrics["accuracy"] == pytest.approx(1 / 3)


def test_three_classes_use_macro_one_vs_rest_auc() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.05, 0.45]])
    labels = np.array([0, 1, 2, 1])
    metrics = compute_metrics(probs, labels, ["Cat", "Dog", "Fox"])
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics["accuracy"] == 0.75
    # Cat vs rest: 0.8 beats 0.2, 0.1, 0.5 -> 1. Dog vs rest: 0.7 beats 0.1 and 0.2, 0.05 beats
    # neither -> 2/4. Fox vs rest: 0.7 beats 0.1, 0.1, 0.45 -> 1. Mean of the three: 2.5 / 3.
    assert metrics["roc_auc"] == pytest.approx(2.5 / 3)


def test_one_class_present_gives_no_auc_and_formats_without_it() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    metrics = compute_metrics(probs, np.array([0, 0]), ["Cat", "Dog"])
    assert metrics["roc_auc"] is None
    assert "ROC AUC" not in format_metrics(metrics)
    assert "accuracy 0.5000" in format_metrics(metrics)


def test_format_metrics_shows_the_table() -> None:
    probs, labels = two_class_example()
    text = format_metrics(compute_metrics(probs, labels, ["Cat", "Dog"]))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "images"]
    assert lines[1].split() == ["Cat", "1.0000", "0.6667", "0.8000", "3"]
    assert lines[2].split() == ["Dog", "0.7500", "1.0000", "0.8571", "3"]
    assert lines[3].split() == ["macro", "0.8750", "0.8333", "0.8286", "6"]
    assert "accuracy 0.8333 (6 images)" in lines[4] and "ROC AUC 0.8889" in lines[4]
    assert lines[5].endswith("[[2, 1], [0, 3]]")


def test_a_class_without_photos_has_no_recall_and_does_not_pull_the_macro_down() -> None:
    # Only cats here; the model calls one of the four a dog.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    metrics = compute_metrics(probs, np.array([0, 0, 0, 0]), ["Cat", "Dog"])
    dog = metrics["per_class"]["Dog"]
    assert dog == {"precision": 0.0, "recall": None, "f1": None, "support": 0}  # its one call was wrong
    assert metrics["macro"] == {"precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7)}  # Cat's alone
    assert metrics["balanced_accuracy"] == 0.75 == metrics["accuracy"]
    text = format_metrics(metrics)
    assert text.splitlines()[2].split() == ["Dog", "0.0000", "—", "—", "0"]
    assert "(no photos of Dog here: the macro averages are over the other classes)" in text


def test_unbalanced_classes_show_the_majority_baseline_and_balanced_accuracy() -> None:
    # 9 defects, 1 ok; a model that always answers "defect".
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 9 + [1])
    metrics = compute_metrics(probs, labels, ["defect", "ok"])
    assert metrics["accuracy"] == 0.9
    assert metrics["majority_baseline"] == {"class": "defect", "accuracy": 0.9}
    assert metrics["balanced_accuracy"] == 0.5  # recall 1 for defect, 0 for ok
    text = format_metrics(metrics)
    assert "balanced accuracy 0.5000" in text
    assert "unbalanced classes: always answering defect would score 0.9000" in text
    balanced = compute_metrics(*two_class_example(), ["Cat", "Dog"])
    assert "unbalanced" not in format_metrics(balanced)


def test_long_class_names_keep_the_table_aligned() -> None:
    probs, labels = two_class_example()
    lines = format_metrics(compute_metrics(probs, labels, ["Good Parts", "bad_pärts ünï longer"])).splitlines()
    columns = {line.index("images") + len("images") if i == 0 else len(line) for i, line in enumerate(lines[:4])}
    assert lines[2].startswith("bad_pärts ünï longer  ") and len(columns) == 1  # every row ends under "images"


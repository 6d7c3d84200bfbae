"""Tests for the metric functions of catsdogs.evaluate, against values worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catsdogs.evaluate import accuracy, binary_auc, compute_metrics, confusion_matrix, format_metrics


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


def test_evaluating_other_photos_never_replaces_the_run_s_own_results(tiny_run, tmp_path) -> None:
    import shutil
    from pathlib import Path

    from catsdogs.evaluate import evaluate_run

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    own = evaluate_run(run, device="cpu", progress=False)
    assert own.metrics_path == run / "metrics.json"
    first = own.metrics_path.read_text()
    other = Path(shutil.copytree(data, tmp_path / "new-photos"))
    for index in range(3):  # a different set: half the dogs gone
        (other / "test" / "Dog" / f"{index}.jpg").unlink()
    foreign = evaluate_run(run, data=str(other), device="cpu", progress=False)
    assert foreign.metrics_path == run / "eval-new-photos" / "metrics.json"
    assert foreign.predictions_path.parent == foreign.figure_path.parent == run / "eval-new-photos"
    assert foreign.metrics["images"] == 9 and own.metrics["images"] == 12
    assert own.metrics_path.read_text() == first
    chosen = evaluate_run(run, data=str(other), device="cpu", progress=False, out_dir=tmp_path / "elsewhere")
    assert chosen.metrics_path == tmp_path / "elsewhere" / "metrics.json"


def test_a_folder_of_class_subfolders_is_measured_whole_without_a_cache(tiny_run, tmp_path) -> None:
    import shutil
    from pathlib import Path

    from catsdogs.evaluate import evaluate_run

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "my-photos"))  # Cat/ and Dog/, no split folders
    shutil.copy(data / "val" / "Dog" / "0.jpg", photos / "Dog" / "extra.jpg")
    result = evaluate_run(run, data=str(photos), device="cpu", progress=False)
    assert result.metrics["split"] == "all" and result.metrics["images"] == 13
    assert result.metrics["per_class"]["Dog"]["support"] == 7
    assert result.metrics_path == run / "eval-my-photos" / "metrics.json"
    assert sorted(p.name for p in photos.iterdir()) == ["Cat", "Dog"]  # nothing written into the user's folder
    with result.predictions_path.open() as handle:
        assert sum(1 for _ in handle) == 14


def test_other_checkpoints_write_beside_best_and_a_re_split_test_set_is_flagged(tiny_run, tmp_path) -> None:
    import shutil
    from pathlib import Path

    from catsdogs.evaluate import evaluate_run

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    best = evaluate_run(run, device="cpu", progress=False)
    assert "warning" not in best.metrics
    last = evaluate_run(run, checkpoint="last", device="cpu", progress=False)
    assert last.metrics_path == run / "metrics_last.json" and last.predictions_path == run / "predictions_last.csv"
    other = evaluate_run(run, checkpoint=str(run / "best.pt"), split="val", device="cpu", progress=False)
    assert other.metrics_path == run / "metrics_val_best.json"
    assert json.loads(best.metrics_path.read_text())["checkpoint"] == str(run / "best.pt")  # not replaced
    # Point the copied run at a copy of its split, then re-split that copy under it.
    from catsdogs.checkpoint import load_checkpoint, save_checkpoint

    copy = Path(shutil.copytree(data, tmp_path / "data"))
    state = load_checkpoint(run / "best.pt")
    state["config"]["data"] = str(copy)
    save_checkpoint(state, run / "best.pt")
    assert "warning" not in evaluate_run(run, device="cpu", progress=False).metrics  # same photos, other place
    (copy / "train" / "Dog" / "0.jpg").rename(copy / "test" / "Dog" / "from-train.jpg")
    flagged = evaluate_run(run, device="cpu", progress=False).metrics
    assert "has been split again since this run was trained" in flagged["warning"]
    assert flagged["images"] == 13


def test_unreadable_photos_are_recorded_and_a_failed_evaluation_leaves_no_folder(tiny_run, tmp_path) -> None:
    import shutil
    from pathlib import Path

    from catsdogs.errors import CatsdogsError
    from catsdogs.evaluate import evaluate_run

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "mixed"))
    (photos / "Cat" / "text.jpg").write_text("not a photo")
    (photos / "Dog" / "zero.jpg").write_bytes(b"")
    result = evaluate_run(run, data=str(photos), device="cpu", progress=False)
    assert result.metrics["images"] == 12
    assert result.metrics["unreadable_images"] == [str(photos / "Cat" / "text.jpg"), str(photos / "Dog" / "zero.jpg")]
    # A folder whose classes the model does not know: one clear error, and no empty eval-* folder.
    (tmp_path / "foxes" / "Fox").mkdir(parents=True)
    (tmp_path / "foxes" / "Cat").mkdir()
    with pytest.raises(CatsdogsError, match=r"has class folders \['Cat', 'Fox'\], but the model knows"):
        evaluate_run(run, data=str(tmp_path / "foxes"), device="cpu", progress=False)
    (tmp_path / "flat").mkdir()
    shutil.copy(data / "test" / "Cat" / "0.jpg", tmp_path / "flat" / "cat.0.jpg")
    with pytest.raises(CatsdogsError, match="has no class subfolders .* use `catsdogs predict`"):
        evaluate_run(run, data=str(tmp_path / "flat"), device="cpu", progress=False)
    assert sorted(p.name for p in run.glob("eval-*")) == ["eval-mixed"]


def test_photos_of_only_some_classes_are_measured(tiny_run, tmp_path) -> None:
    import shutil
    from pathlib import Path

    from catsdogs.evaluate import evaluate_run

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    cats = tmp_path / "only-cats"
    shutil.copytree(data / "test" / "Cat", cats / "Cat")
    metrics = evaluate_run(run, data=str(cats), device="cpu", progress=False).metrics
    assert metrics["images"] == 6 and metrics["per_class"]["Cat"]["support"] == 6
    assert metrics["per_class"]["Dog"]["support"] == 0 and metrics["roc_auc"] is None
    assert metrics["accuracy"] == pytest.approx(metrics["confusion_matrix"][0][0] / 6)

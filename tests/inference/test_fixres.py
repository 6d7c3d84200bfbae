"""evaluate --image-size (FixRes) and predict --image-size: measuring a run at another side than it trained at."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from catsdogs.data.images import load_resized
from catsdogs.data.transforms import MEAN, STD
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.predict import load_trained
from tests.helpers import invoke, quiet, split_fixture

data = split_fixture((12, 4, 6), size=96, scope="module")


@pytest.fixture(scope="module")
def bncnn_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch bncnn-s run (global pooling) trained at 48 px on 96 px photos; copy it before writing into it."""
    from catsdogs.training.config import TrainConfig
    from catsdogs.training.train import train

    cfg = TrainConfig(data=str(data), out=str(tmp_path_factory.mktemp("fixres") / "run"), model="bncnn-s",
                      optim="adam", image_size=48, epochs=2, batch_size=8, device="cpu", precision="fp32")
    return train(cfg, progress=False, log=quiet).run_dir


def probabilities_at(run: Path, photos: list[Path], size: int) -> np.ndarray:
    """The run's best model on `photos` decoded at `size`, normalised here by hand: softmax rows."""
    model = load_trained(run, "best", "cpu").model
    batch = torch.from_numpy(np.stack([load_resized(photo, size) for photo in photos])).float()
    images = (batch.permute(0, 3, 1, 2) / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(images), dim=1).numpy()


def read_probabilities(predictions: Path) -> dict[str, tuple[float, float]]:
    """p_Cat and p_Dog of each classified photo of an evaluate or predict CSV, by `Class/name`."""
    with predictions.open(encoding="utf-8", newline="") as handle:
        return {Path(row["path"]).parent.name + "/" + Path(row["path"]).name: (float(row["p_Cat"]), float(row["p_Dog"]))
                for row in csv.DictReader(handle) if row["p_Cat"]}


def assert_same_probabilities(got: dict[str, tuple[float, float]], expected: dict[str, tuple[float, float]]) -> None:
    assert got.keys() == expected.keys() and len(got) == 12
    assert max(abs(a - b) for name in got for a, b in zip(got[name], expected[name])) < 1e-5


def results_of(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run.iterdir()
            if path.name.startswith(("metrics", "predictions", "confusion"))}


def test_a_larger_size_writes_suffixed_results_measured_at_that_size(bncnn_run, data, tmp_path) -> None:
    run = Path(shutil.copytree(bncnn_run, tmp_path / "run"))
    plain = evaluate_run(run, device="cpu", progress=False)
    assert plain.metrics["image_size"] == 48
    before = results_of(run)
    bigger = evaluate_run(run, device="cpu", progress=False, image_size=80)
    assert (bigger.metrics_path, bigger.figure_path, bigger.predictions_path) == (
        run / "metrics_80px.json", run / "confusion_matrix_80px.png", run / "predictions_80px.csv")
    recorded = json.loads(bigger.metrics_path.read_text())
    assert recorded["image_size"] == 80 and recorded["images"] == 12
    after = results_of(run)
    assert {name: after[name] for name in before} == before  # the results at the trained size stay as they were
    # The model run here on the photos decoded at 80 px: the same probabilities and accuracy.
    photos = sorted((data / "test").glob("*/*.jpg"))
    labels = np.asarray([photo.parent.name == "Dog" for photo in photos], dtype=np.int64)
    expected = probabilities_at(run, photos, 80)
    measured = read_probabilities(bigger.predictions_path)
    names = [photo.relative_to(data / "test").as_posix() for photo in photos]
    assert np.abs(np.asarray([measured[name] for name in names]) - expected).max() < 1e-4
    assert recorded["accuracy"] == pytest.approx(float((expected.argmax(1) == labels).mean()))
    at_48 = read_probabilities(plain.predictions_path)
    assert np.abs(np.asarray([at_48[name] for name in names]) - expected).max() > 1e-3  # the size did change them
    same = evaluate_run(run, device="cpu", progress=False, image_size=48)  # the trained size: the plain files
    assert same.metrics_path == run / "metrics.json" and same.metrics["image_size"] == 48


def test_the_option_works_with_split_checkpoint_tta_data_and_predict(bncnn_run, data, tmp_path) -> None:
    run = Path(shutil.copytree(bncnn_run, tmp_path / "run"))
    result = invoke("evaluate", run, "--split", "val", "--checkpoint", "last", "--tta", "--image-size", "64")
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "metrics_val_last_64px_tta.json").read_text())
    assert recorded["image_size"] == 64 and recorded["split"] == "val" and recorded["tta"] is True
    assert recorded["checkpoint"] == str(run / "last.pt") and recorded["images"] == 8
    own = evaluate_run(run, device="cpu", progress=False, image_size=64)
    photos = Path(shutil.copytree(data / "test", tmp_path / "photos" / "test"))  # the same bytes elsewhere
    result = invoke("evaluate", run, "--data", photos, "--image-size", "64", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    other = json.loads((tmp_path / "out" / "metrics_64px.json").read_text())
    assert other["image_size"] == 64 and other["confusion_matrix"] == own.metrics["confusion_matrix"]
    assert_same_probabilities(read_probabilities(tmp_path / "out" / "predictions_64px.csv"),
                              read_probabilities(own.predictions_path))
    result = invoke("predict", photos, "--run", run, "--image-size", "64", "--out", tmp_path / "predicted.csv")
    assert result.exit_code == 0, result.output
    assert_same_probabilities(read_probabilities(tmp_path / "predicted.csv"), read_probabilities(own.predictions_path))


def test_a_size_the_model_cannot_take_is_refused_in_one_line(bncnn_run, tiny_run, tmp_path) -> None:
    run = Path(shutil.copytree(bncnn_run, tmp_path / "run"))
    result = invoke("evaluate", run, "--image-size", "16")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --image-size 16: model bncnn-s needs at least 32px (this run trained at 48px)"]
    assert not list(run.glob("metrics*"))
    cnn3 = Path(shutil.copytree(tiny_run[0], tmp_path / "cnn3"))  # its head is sized by the 96 px it trained at
    result = invoke("evaluate", cnn3, "--image-size", "160")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --image-size 160: model cnn3 cannot take 160px images, its head is sized for the features of its "
        "training size, 96px: choose a size nearer that"]
    assert not list(cnn3.glob("metrics*"))
    assert invoke("evaluate", cnn3, "--image-size", "112").exit_code == 0  # features of the same shape: it fits
    assert json.loads((cnn3 / "metrics_112px.json").read_text())["image_size"] == 112
    result = invoke("predict", tiny_run[1] / "test", "--run", run, "--image-size", "16")
    assert result.exit_code == 2 and "Error: --image-size 16: model bncnn-s needs at least 32px" in result.output
    result = invoke("predict", tiny_run[1] / "test", "--model", tmp_path / "model.onnx", "--image-size", "64")
    assert result.exit_code == 2
    assert "--model classifies at the size the file was exported at: drop --image-size" in result.output

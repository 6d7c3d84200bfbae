"""`catsdogs report`: one self-contained page per run, tested in a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from catsdogs.cli import main
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.explain import explain_photos, worst_mistakes
from catsdogs.inference.predict import load_trained
from catsdogs.inference.run_report import write_run_report
from catsdogs.training.config import TrainConfig
from catsdogs.training.train import train
from tests.browser import assert_loads_cleanly
from tests.conftest import CLASS_COLOURS, write_tiny_split


@pytest.fixture(scope="module")
def explained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained, evaluated and explained run with real mistakes: three test cats painted dog-blue."""
    root = tmp_path_factory.mktemp("explained")
    data = write_tiny_split(root, per_class=(16, 4, 6), size=96)
    rng = np.random.default_rng(9)
    for index in range(3):
        pixels = np.clip(np.asarray(CLASS_COLOURS["Dog"]) + rng.normal(0, 25, (96, 96, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(data / "test" / "Cat" / f"{index}.jpg", quality=95)
    cfg = TrainConfig(data=str(data), out=str(root / "runs" / "tiny"), optim="adam", image_size=96, epochs=2,
                      batch_size=8, device="cpu", precision="fp32", augment="crop", hflip=0.5)
    run = train(cfg, progress=False, log=lambda _: None).run_dir
    evaluate_run(run, device="cpu", progress=False)
    truths = worst_mistakes(run, 8)
    explain_photos(load_trained(run, device="cpu"), list(truths), run / "explain", progress=False, truths=truths)
    return run


def test_a_trained_evaluated_and_explained_run_gets_every_part(explained_run: Path) -> None:
    result = write_run_report(explained_run)
    assert result.path == explained_run / "report.html" and result.missing == []
    text = result.path.read_text()
    metrics = json.loads((explained_run / "metrics.json").read_text())
    assert f"test accuracy <b>{metrics['accuracy']:.4f}</b>" in text
    assert f"Expected calibration error (ECE): <b>{metrics['ece']:.4f}</b>" in text
    history = (explained_run / "history.csv").read_text().splitlines()[1].split(",")
    assert f"<td class=\"num\">{float(history[4]):.4f}</td>" in text  # epoch 1's val loss in the table
    for heading in ("Config", "Data", "History", "Test metrics", "Calibration", "Most confident mistakes",
                    "Training images as the model got them"):
        assert f">{heading}</h2>" in text
    assert "<td>augment</td><td>crop</td>" in text  # the resolved config
    assert '<td>Cat</td><td class="num">16</td><td class="num">4</td><td class="num">6</td>' in text
    # curves, reliability diagram, one Grad-CAM figure per mistake, the training grid; nothing but data: URIs
    sources = re.findall(r'<img src="([^"]*)"', text)
    mistakes = len(list((explained_run / "explain").glob("*_gradcam.png")))
    assert mistakes >= 1 and len(sources) == 3 + mistakes
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_the_page_loads_cleanly_in_a_browser_and_shows_the_accuracy(explained_run: Path, tmp_path: Path) -> None:
    page = write_run_report(explained_run).path
    loaded = assert_loads_cleanly(page, tmp_path / "report.png")
    accuracy = json.loads((explained_run / "metrics.json").read_text())["accuracy"]
    assert f"test accuracy {accuracy:.4f}" in loaded.text
    assert len(loaded.images) >= 4


def test_parts_without_their_inputs_name_the_command_that_makes_them(tiny_run: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))  # trained, never evaluated
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    command = f"catsdogs evaluate {run}"
    assert result.output.splitlines() == [f"not in the report yet: test metrics, calibration, mistakes (run "
                                          f"`{command}`)", f"wrote {run / 'report.html'}"]
    text = (run / "report.html").read_text()
    assert text.count(f"Run <code>{command}</code>.") == 3
    assert "not evaluated yet" in text and "Training images as the model got them" in text


def test_a_moved_data_folder_is_said_in_its_parts(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    config = (run / "config.yaml").read_text().replace(str(tiny_run[1]), str(tmp_path / "gone"))
    (run / "config.yaml").write_text(config)
    result = write_run_report(run)
    parts = [part for part, _ in result.missing]
    assert parts[:3] == ["train photo counts", "val photo counts", "test photo counts"]
    assert "training images" in parts
    assert f"data folder {tmp_path / 'gone'} does not exist" in (run / "report.html").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere"], "Error: run folder nowhere does not exist"),
    (["."], "has no config.yaml: name a run folder that `catsdogs train` made"),
])
def test_no_run_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["report", *args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output

"""`catsdogs report`: one self-contained page per run, tested in a real browser."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
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
from tests.helpers import CLASS_COLOURS, write_tiny_split


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


HISTORY_HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,val_balanced_acc,lr,seconds\n"


def hand_made_run(run: Path, epochs: list[tuple[float, float, float]], **settings: object) -> Path:
    """A run folder as train leaves it, written by hand: config.yaml with `settings`, and history.csv with
    one (val_loss, val_acc, val_balanced_acc) per epoch. Its data folder does not exist unless made."""
    run.mkdir(parents=True)
    config = {"data": str(run.parent / "data"), "model": "cnn3", "optim": "adam", "image_size": 96, **settings}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    rows = [f"{epoch},0.5,0.8,{loss},{acc},{balanced},0.001,1.0\n"
            for epoch, (loss, acc, balanced) in enumerate(epochs, 1)]
    (run / "history.csv").write_text(HISTORY_HEADER + "".join(rows), encoding="utf-8")
    return run


@pytest.mark.parametrize(("class_weights", "epochs", "headline"), [
    # epochs 2 and 3 tie on accuracy; train keeps the lower loss, epoch 3
    ("none", [(0.60, 0.75, 0.75), (0.55, 0.80, 0.79), (0.45, 0.80, 0.80)],
     "3 epochs, best val accuracy 0.8000 (epoch 3)"),
    # epoch 1 answers the larger class only; balanced weights choose by balanced accuracy, epoch 3 by its loss
    ("balanced", [(0.50, 0.857, 0.500), (0.70, 0.700, 0.725), (0.65, 0.690, 0.725)],
     "3 epochs, best val balanced accuracy 0.7250 (accuracy 0.6900, epoch 3)"),
])
def test_the_headline_names_the_epoch_train_kept_as_best_pt(tmp_path: Path, class_weights: str,
                                                            epochs: list[tuple[float, float, float]],
                                                            headline: str) -> None:
    run = hand_made_run(tmp_path / "run", epochs, class_weights=class_weights)
    text = write_run_report(run).path.read_text(encoding="utf-8")
    assert f'<p class="muted">{headline} · model cnn3' in text


def test_metrics_older_than_best_pt_are_called_stale_on_the_page_and_in_one_line(tiny_run: tuple[Path, Path],
                                                                                 tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    evaluate_run(run, device="cpu", progress=False)
    measured = json.loads((run / "metrics.json").read_text())["epoch"]
    fresh = CliRunner().invoke(main, ["report", str(run)])
    assert fresh.exit_code == 0 and fresh.output.splitlines() == [f"wrote {run / 'report.html'}"]
    assert "stale" not in (run / "report.html").read_text()
    # As `train --resume RUN --epochs 3` leaves it when epoch 3 is better: a new history row, best.pt saved again.
    with (run / "history.csv").open("a", encoding="utf-8") as handle:
        handle.write("3,0.01,1.0,0.001,1.0,1.0,0.001,1.0\n")
    later = (run / "metrics.json").stat().st_mtime_ns + 2_000_000_000
    os.utime(run / "best.pt", ns=(later, later))
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    stale = (f"the test metrics, calibration and mistakes are stale: they measure best.pt at epoch {measured}, "
             f"and training has saved a newer best.pt since (epoch 3); run `catsdogs evaluate {run}` to "
             "refresh them")
    assert result.output.splitlines() == [f"warning: {stale}", f"wrote {run / 'report.html'}"]
    assert (run / "report.html").read_text().count(html.escape(f"Warning: {stale}.")) == 2  # headline, metrics


def test_csv_files_are_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    run = hand_made_run(tmp_path / "run", [(0.5, 0.75, 0.75)])
    (run / "predictions.csv").write_text("path,label,predicted,p_Chat-é,p_Chien\n"
                                         "test/Chat-é/1.jpg,Chat-é,Chien,0.100000,0.900000\n"
                                         "test/Chien/2.jpg,Chien,Chien,0.200000,0.800000\n", encoding="utf-8")
    # An ASCII locale without Python's UTF-8 mode, where open() without an encoding reads ASCII.
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    script = ("import locale, sys; from catsdogs.inference.run_report import write_run_report; "
              "write_run_report(sys.argv[1]); print(locale.getpreferredencoding(False))")
    done = subprocess.run([sys.executable, "-c", script, str(run)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ANSI_X3.4-1968"  # the locale really was ASCII
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "<td>test/Chat-é/1.jpg</td><td>Chat-é</td><td>Chien</td>" in text


def cells(*values: object) -> str:
    """Table cells of numbers, as the page writes them."""
    return "".join(f'<td class="num">{value}</td>' for value in values)


HOSTILE_CLASS = "<img src=x onerror=alert(1)>&\"'"  # a folder name may hold all of these, but no slash
HOSTILE_RUN = "<script>alert(1)&\"'"


def test_hostile_class_and_run_names_appear_escaped(tmp_path: Path) -> None:
    data = write_tiny_split(tmp_path, per_class=(2, 2, 2), size=48)
    for split in ("train", "val", "test"):
        (data / split / "Cat").rename(data / split / HOSTILE_CLASS)
    run = hand_made_run(tmp_path / HOSTILE_RUN, [(0.5, 0.75, 0.75)])
    classes = [HOSTILE_CLASS, "Dog"]
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for name in classes}
    metrics = {"accuracy": 0.5, "images": 4, "classes": classes, "per_class": per_class,
               "macro": {"precision": 0.5, "recall": 0.5, "f1": 0.5}, "confusion_matrix": [[1, 1], [1, 1]],
               "split": "test", "data": str(data), "checkpoint": str(run / "best.pt"), "epoch": 1}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    photo = f"{data}/test/{HOSTILE_CLASS}/0.jpg"
    with (run / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "label", "predicted", f"p_{HOSTILE_CLASS}", "p_Dog"],
                                      [photo, HOSTILE_CLASS, "Dog", 0.1, 0.9]])
    text = write_run_report(run).path.read_text(encoding="utf-8")
    assert "<script" not in text and "<img src=x" not in text
    name, run_name = html.escape(HOSTILE_CLASS), html.escape(HOSTILE_RUN)
    assert f"<h1>Run {run_name}</h1>" in text and f"<title>catsdogs run {run_name}</title>" in text
    assert f"<tr><td>{name}</td>{cells(2, 2, 2, 6)}</tr>" in text  # photos per split in the data section
    assert f"<tr><td>{name}</td>{cells('0.5000', '0.5000', '0.5000', 2)}</tr>" in text  # per-class metrics
    assert f'<th class="num">{name}</th>' in text and f"<tr><td>{name}</td>{cells(1, 1)}</tr>" in text  # matrix
    assert f"<td>{html.escape(photo)}</td><td>{name}</td><td>Dog</td>" in text  # the mistakes

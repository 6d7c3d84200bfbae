"""Tests for catsdogs.inference.predict and `catsdogs predict`: the same numbers as evaluate, bad files, TTA."""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs.errors import UsageError
from catsdogs.inference import predict
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.predict import collect_photos, load_trained, predict_photos, write_predictions_csv
from tests.helpers import invoke


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_gives_the_probabilities_evaluate_gives(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    evaluation = evaluate_run(run, data=str(data), device="cpu", progress=False)
    expected = {row["path"]: float(row["p_Dog"]) for row in read_csv(evaluation.predictions_path)}
    trained = load_trained(run, device="cpu")
    result = predict_photos(trained, collect_photos([data / "test"]), progress=False)
    assert len(result.paths) == len(expected) == 12
    got = {str(path): float(row[1]) for path, row in zip(result.paths, result.probs)}
    assert got.keys() == expected.keys()
    for path, p_dog in expected.items():
        assert got[path] == pytest.approx(p_dog, abs=1e-5), path
    assert np.allclose(result.probs.sum(1), 1.0, atol=1e-5)


def test_collect_photos_walks_folders_and_keeps_named_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    for name in ("a/2.jpg", "a/deeper/1.PNG", "a/notes.txt", "single.weird"):
        (tmp_path / name).write_bytes(b"x")
    photos = collect_photos([tmp_path / "a", tmp_path / "single.weird", tmp_path / "a" / "2.jpg"])
    # Folders give their image files in sorted order; a file named outright is taken as it is; no repeats.
    assert photos == [tmp_path / "a" / "2.jpg", tmp_path / "a" / "deeper" / "1.PNG", tmp_path / "single.weird"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root / "missing.jpg", "does not exist"),
    (lambda root: root, r"holds no photo files \(.jpg, .png, ...\); it holds .*readme.txt: not named as a photo"),
])
def test_collect_photos_refuses_what_is_not_there(tmp_path: Path, make, message: str) -> None:
    (tmp_path / "readme.txt").write_text("no photos here")
    with pytest.raises(UsageError, match=message):
        collect_photos([make(tmp_path)])


def test_tta_is_the_mean_of_the_photo_and_its_mirror(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    # PNGs at the model's own size: no resize and no JPEG loss, so the mirror file is the mirrored input.
    pixels = np.asarray(Image.open(data / "test" / "Cat" / "0.jpg").convert("RGB"))
    rng = np.random.default_rng(3)
    pixels = np.clip(pixels.astype(int) + rng.integers(-60, 60, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "mirror.png")
    trained = load_trained(run_dir, device="cpu")
    plain = predict_photos(trained, [tmp_path / "photo.png", tmp_path / "mirror.png"], progress=False).probs
    tta = predict_photos(trained, [tmp_path / "photo.png"], tta=True, progress=False).probs
    assert not np.allclose(plain[0], plain[1])  # the mirror really is a different input
    assert tta[0] == pytest.approx((plain[0] + plain[1]) / 2, abs=1e-6)


def test_unreadable_photos_are_reported_not_fatal(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    shutil.copy(data / "test" / "Dog" / "0.jpg", tmp_path / "good.jpg")
    (tmp_path / "text.jpg").write_text("this is not a photo")
    whole = (data / "test" / "Dog" / "1.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    trained = load_trained(run_dir, device="cpu")
    result = predict_photos(trained, collect_photos([tmp_path]), progress=False)
    assert result.paths == [tmp_path / "good.jpg"]
    reasons = dict(result.unreadable)
    assert reasons[tmp_path / "text.jpg"] == "not an image"
    assert "truncated" in reasons[tmp_path / "truncated.jpg"]
    rows = read_csv(write_predictions_csv(tmp_path / "out.csv", result))
    assert [row["path"] for row in rows] == [str(tmp_path / name) for name in ("good.jpg", "text.jpg", "truncated.jpg")]
    assert rows[0]["predicted"] in ("Cat", "Dog") and rows[0]["error"] == ""
    assert float(rows[0]["probability"]) == pytest.approx(max(float(rows[0]["p_Cat"]), float(rows[0]["p_Dog"])))
    assert rows[1]["predicted"] == "" and rows[1]["error"] == "not an image"


def test_predict_command_lists_each_photo(tiny_run, tmp_path: Path, monkeypatch) -> None:
    run_dir, data = tiny_run
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", "--run", str(run_dir), "--device", "cpu", str(data / "test" / "Cat"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.endswith(".jpg")]
    assert len(lines) == 6
    for line in lines:
        label, probability, path = line.split()
        assert label in ("Cat", "Dog") and 0.5 <= float(probability) <= 1.0 and Path(path).is_file()
    counts = [line for line in result.output.splitlines() if "photos classified" in line]
    assert len(counts) == 1 and counts[0].startswith("6 photos classified (")


def test_predict_command_writes_csv_and_says_when_it_replaces(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    out = tmp_path / "predictions.csv"
    first = invoke("predict", "--run", str(run_dir), "--device", "cpu", "--out", str(out), str(data / "test"))
    assert first.exit_code == 0, first.output
    assert f"wrote {out}\n" in first.output and "replacing" not in first.output
    assert len(read_csv(out)) == 12
    again = invoke("predict", "--run", str(run_dir), "--device", "cpu", "--out", str(out), str(data / "test" / "Cat"))
    assert again.exit_code == 0 and "replacing the earlier predictions there" in again.output
    assert len(read_csv(out)) == 6
    mine = tmp_path / "mine.csv"  # a file of the user's is never replaced
    mine.write_text("name,amount\nrent,900\n")
    refused = invoke("predict", "--run", str(run_dir), "--device", "cpu", "--out", str(mine), str(data / "test"))
    assert refused.exit_code == 2 and mine.read_text() == "name,amount\nrent,900\n"
    assert f"Error: --out {mine} exists and is not a CSV written by `catsdogs predict`" in refused.output


@pytest.mark.parametrize(("args", "code", "message"), [
    (["nowhere.jpg"], 2, "nowhere.jpg does not exist"),
    (["--out", "predictions.txt", "PHOTO"], 2, "give a file name ending in .csv"),
    (["--run", "empty-run", "PHOTO"], 1, "empty-run is not a run folder (no config.yaml or checkpoints)"),
    (["--checkpoint", "last", "--run", "started-run", "PHOTO"], 1, "started-run has no last.pt"),
    (["--run", "empty-run", "FOLDER"], 1, "empty-run is not a run folder"),  # told before the folder's search
    (["--out", "nowhere/p.csv", "PHOTO"], 2, "--out nowhere/p.csv: folder nowhere does not exist"),
    (["LOOP"], 2, "loop.jpg is a broken or looping link"),
    (["BROKEN"], 1, "the photo could not be read"),
])
def test_predict_command_errors_are_one_line(tiny_run, tmp_path: Path, monkeypatch, args, code, message) -> None:
    run_dir, data = tiny_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "started-run").mkdir()
    (tmp_path / "started-run" / "config.yaml").write_text("optim: adam\n")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / ".DS_Store").write_bytes(b"finder")  # would be named in a `left out:` line
    shutil.copy(data / "test" / "Cat" / "0.jpg", tmp_path / "folder" / "a.jpg")
    args = [{"PHOTO": str(data / "test" / "Cat" / "0.jpg"), "BROKEN": "broken.jpg", "LOOP": "loop.jpg",
             "FOLDER": "folder"}.get(a, a) for a in args]
    if "--run" not in args:
        args = ["--run", str(run_dir), *args]
    result = invoke("predict", "--device", "cpu", *args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    if code == 1 and "run folder" in message:
        assert result.output.strip() == errors[0]  # nothing about the photos before it


def test_folders_behind_links_are_searched_once_and_what_is_left_out_is_said(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    photos = tmp_path / "photos"
    (photos / "real").mkdir(parents=True)
    shutil.copy(data / "test" / "Cat" / "0.jpg", photos / "real" / "a.jpg")
    (photos / "linked").symlink_to(data / "test" / "Dog", target_is_directory=True)  # 6 photos behind a link
    (photos / "real" / "back").symlink_to(photos, target_is_directory=True)  # a loop
    (photos / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (photos / "real" / "IMG_1.HEIC").write_bytes(b"\0")  # an iPhone photo, not readable here
    (photos / "real" / ".DS_Store").write_bytes(b"\0")
    (photos / ".ipynb_checkpoints").mkdir()
    shutil.copy(data / "test" / "Cat" / "0.jpg", photos / ".ipynb_checkpoints" / "a-checkpoint.jpg")
    left_out: list[tuple[Path, str]] = []
    found = collect_photos([photos], left_out)
    assert sorted(p.name for p in found) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg", "a.jpg"]
    assert sorted((path.relative_to(photos).as_posix(), reason) for path, reason in left_out) == [
        (".ipynb_checkpoints", "hidden or metadata folder, not searched"), ("dangling.jpg", "a broken or looping link"),
        ("real/.DS_Store", "hidden file"),
        ("real/IMG_1.HEIC", "not named as a photo (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)")]
    result = invoke("predict", "--run", str(run_dir), "--device", "cpu", str(photos))
    assert result.exit_code == 0, result.output
    assert f"left out: {photos / 'dangling.jpg'}: a broken or looping link" in result.stderr
    assert f"left out: {photos / 'real' / 'IMG_1.HEIC'}: not named as a photo" in result.stderr
    assert "7 photos classified" in result.stderr


def test_stdout_holds_only_the_classified_photos(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    shutil.copy(data / "test" / "Dog" / "0.jpg", tmp_path / "good photo.jpg")
    (tmp_path / "text.jpg").write_text("not a photo")
    (tmp_path / "zero.jpg").write_bytes(b"")
    result = invoke("predict", "--run", str(run_dir), "--device", "cpu", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"  {tmp_path / 'good photo.jpg'}")
    assert f"unreadable: {tmp_path / 'text.jpg'} (not an image)" in result.stderr
    assert f"unreadable: {tmp_path / 'zero.jpg'} (empty file)" in result.stderr  # as split says it
    assert "1 photo classified" in result.stderr and "2 unreadable" in result.stderr


def test_a_name_that_is_not_utf8_is_classified_and_written_escaped_and_a_tiny_photo_refused(tiny_run,
                                                                                          tmp_path: Path) -> None:
    run_dir, data = tiny_run
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data / "test" / "Dog" / "0.jpg", photos / os.fsdecode(b"\xff.jpg"))  # Linux allows any bytes
    Image.new("RGB", (1, 1), (60, 70, 190)).save(photos / "pixel.png")
    result = invoke("predict", "--run", str(run_dir), "--device", "cpu", "--out", str(tmp_path / "out.csv"),
                    str(photos))
    assert result.exit_code == 0, result.output
    with (tmp_path / "out.csv").open(encoding="utf-8", newline="") as handle:  # strict: valid UTF-8
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert rows.keys() == {f"{photos}/\\xff.jpg", f"{photos}/pixel.png"}
    assert rows[f"{photos}/\\xff.jpg"]["predicted"] in ("Cat", "Dog")  # found and read
    assert rows[f"{photos}/pixel.png"]["error"] == "1x1 pixels, under 10 on a side"  # as split leaves it out


class _GreyMeter:
    """A stand-in model whose P(Dog) is a photo's mean grey level, and which counts the photos decoded
    (through the decoder predict calls) but not yet done with: every one of them is held in memory."""

    classes = ["Cat", "Dog"]
    image_size = 16

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        self.done = 0
        self.most_held = 0
        decode = predict.load_resized

        def counted(path, size):
            self.started += 1
            self.most_held = max(self.most_held, self.started - self.done)
            return decode(path, size)

        monkeypatch.setattr(predict, "load_resized", counted)

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        if self.done == 0:  # a model slower than decoding: let the decoders fill two batches, then go quiet
            deadline = time.monotonic() + 10
            while self.started < 3 * len(batch) and time.monotonic() < deadline:
                time.sleep(0.01)
            while time.monotonic() < deadline:
                before = self.started
                time.sleep(0.1)
                if self.started == before:
                    break
        grey = batch.float().mean((1, 2, 3)) / 255
        self.done += len(batch)
        return torch.stack([1 - grey, grey], 1)


def test_photos_decoded_ahead_of_the_model_stay_within_two_batches(tmp_path: Path, monkeypatch) -> None:
    photos = []
    for grey in range(240):
        photos.append(tmp_path / f"{grey:03d}.png")
        Image.new("RGB", (16, 16), (grey, grey, grey)).save(photos[-1])
    model = _GreyMeter(monkeypatch)
    result = predict_photos(model, photos, batch_size=8, progress=False, jobs=2)
    assert model.started == model.done == 240
    # The batch in hand and at most two batches ahead are held; at least one ahead: decoding overlaps the model.
    assert 2 * 8 <= model.most_held <= 3 * 8
    assert result.paths == photos  # in the order given, as before
    assert result.probs[:, 1] * 255 == pytest.approx(np.arange(240), abs=1e-4)

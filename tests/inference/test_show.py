"""`catsdogs show`: a seeded, balanced grid of a split's photos, and training's own first batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from PIL import Image

from catsdogs.data.transforms import Preset, denormalise
from catsdogs.inference.show import draw_photos, show
from catsdogs.training.config import TrainConfig
from catsdogs.training.train import train
from tests.helpers import invoke as invoke_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str) -> Result:
    return invoke_cli("show", *args)


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_the_same_seed_draws_the_same_photos_balanced_across_classes(tmp_path: Path, tiny_split) -> None:
    data = tiny_split(tmp_path, per_class=(12, 4, 4))
    first, again = draw_photos(data, "train", 10, seed=3), draw_photos(data, "train", 10, seed=3)
    assert first.paths == again.paths and first.titles == again.titles
    assert Counter(first.titles) == {"Cat": 5, "Dog": 5}
    assert all(Path(p).parent.name == title for p, title in zip(first.paths, first.titles))
    assert draw_photos(data, "train", 10, seed=4).paths != first.paths
    assert all(np.array_equal(pixels, np.asarray(Image.open(p))) for pixels, p in zip(first.pixels, first.paths))


def test_a_class_with_too_few_photos_leaves_its_places_to_the_others(tmp_path: Path, tiny_split) -> None:
    data = tiny_split(tmp_path, per_class=(12, 4, 4))
    grid = draw_photos(data, "val", 7, seed=0)  # 4 cats and 4 dogs: 4 and 3, or 3 and 4
    assert sorted(Counter(grid.titles).values()) == [3, 4]
    everything = draw_photos(data, "val", 20, seed=0)
    assert Counter(everything.titles) == {"Cat": 4, "Dog": 4} and "only 8 of the 20" in everything.caption


def test_an_unreadable_photo_is_passed_over(tmp_path: Path, tiny_split) -> None:
    data = tiny_split(tmp_path, per_class=(3, 1, 1))
    broken = data / "train" / "Cat" / "0.jpg"
    broken.write_bytes(b"not a jpeg")
    grid = draw_photos(data, "train", 6, seed=0)
    assert grid.unreadable == [broken] and len(grid.pixels) == 5 and broken not in grid.paths


def test_the_cli_writes_show_split_png_for_a_split_or_a_plain_class_folder(tmp_path: Path, tiny_split,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_split(tmp_path, per_class=(6, 2, 2))
    monkeypatch.chdir(tmp_path)
    result = invoke("--split", "test", "--n", "4")  # DATA defaults to ./data
    assert result.exit_code == 0, result.output
    assert result.output == "wrote show-test.png (4 photos)\n"
    assert (tmp_path / "show-test.png").read_bytes().startswith(PNG_MAGIC)
    plain = invoke(str(data / "train"), "--n", "5", "--out", "plain.svg")  # Cat/ and Dog/, no split
    assert plain.exit_code == 0 and "wrote plain.svg (5 photos)" in plain.output
    assert (tmp_path / "plain.svg").read_text().lstrip().startswith("<?xml")
    again = invoke(str(data / "train"), "--n", "5", "--out", "plain.svg")  # our own figure may be replaced
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere"], "Error: nowhere does not exist: pass a split folder"),
    (["empty"], "holds no photo files"),
    (["data", "--n", "0"], "Error: --n must be at least 1, got 0"),
    (["data", "--split", "val", "--augment"], "--split val is never augmented"),
    (["data", "--out", "grid.jpg"], "Error: --out grid.jpg: use a .png, .svg or .pdf file name"),
    (["data", "--out", "notes.png"], "Error: notes.png exists and is not a grid drawn by `catsdogs show`"),
    (["data", "--augment", "no-run"], "Error: run folder no-run does not exist"),
    (["data/train/Cat"], "has 0 class folder(s)"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, tiny_split, monkeypatch: pytest.MonkeyPatch,
                                                   args: list[str], message: str) -> None:
    tiny_split(tmp_path, per_class=(2, 1, 1), size=16)
    for name in ("Cat", "Dog"):
        (tmp_path / "empty" / "train" / name).mkdir(parents=True)
    (tmp_path / "notes.png").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(invoke(*args))
    assert (tmp_path / "notes.png").read_text() == "mine"


@pytest.mark.parametrize("tricks, side", [
    ({}, 96),
    # Progressive resizing (the first 3 of the 4 steps at 64 px) and alternating flips, as cpu-quick trains.
    ({"model": "bncnn-s", "progressive_size": 64, "progressive_fraction": 0.75, "hflip_mode": "alternate"}, 64),
])
def test_the_augmented_grid_is_exactly_what_training_fed_the_model(tmp_path: Path, tiny_split,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   tricks: dict, side: int) -> None:
    """Train a run whose preset crops, jitters and flips, record every batch the training steps got,
    and check that `show --augment RUN` draws those very tensors (two batches' worth here)."""
    data = tiny_split(tmp_path, per_class=(10, 2, 2), size=80)
    fed: list[torch.Tensor] = []
    original = Preset.__call__

    def recording(self: Preset, batch: torch.Tensor, generator: torch.Generator | None = None,
                  *args: object) -> torch.Tensor:
        out = original(self, batch, generator, *args)
        if self.train:
            fed.append(out.clone())
        return out

    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), optim="adam", image_size=96, epochs=1,
                      batch_size=6, device="cpu", precision="fp32", augment="rrc-jitter", hflip=0.5, vflip=0.5,
                      seed=7, **tricks)
    with monkeypatch.context() as patch:
        patch.setattr(Preset, "__call__", recording)
        run = train(cfg, progress=False, log=lambda _: None).run_dir
    first = torch.cat(fed[:2])[:10]
    grid, written = show(None, n=10, augment=str(run), out=tmp_path / "grid.png")
    assert torch.equal(grid.batch, first)  # the model's input, bit for bit
    assert np.array_equal(np.stack(grid.pixels), denormalise(first).numpy())  # what the grid draws
    assert written.read_bytes().startswith(PNG_MAGIC)
    assert "the first 10 training images of epoch 1" in grid.caption and "rrc-jitter" in grid.caption
    assert grid.batch.shape[-1] == side and f"({side} px" in grid.caption
    other, _ = show(None, n=10, augment=str(run), seed=8, out=tmp_path / "other.png")
    assert not torch.equal(other.batch, first)


def test_augment_without_a_run_uses_the_default_settings(tmp_path: Path, tiny_split,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_split(tmp_path, per_class=(4, 1, 1), size=32)
    monkeypatch.chdir(tmp_path)
    result = invoke("--augment", "--n", "3")
    assert result.exit_code == 0, result.output
    assert result.output == "wrote show-train-augmented.png (3 photos)\n"
    grid, _ = show("data", n=3, augment="", out=tmp_path / "again.png")
    assert grid.batch.shape == (3, 3, 224, 224) and "default settings" in grid.caption

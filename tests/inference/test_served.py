"""What `catsdogs serve` serves: a run's verified ONNX export made from its best checkpoint, else the checkpoint;
and how it reads uploaded bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs.data.images import load_resized
from catsdogs.inference.export import default_export_path, export_run
from catsdogs.inference.served import BadPhoto, TooManyPixels, decode_photo, load_served
from tests.inference.serving import bomb_png


def test_a_verified_export_of_the_best_checkpoint_serves_and_a_stale_one_does_not(tiny_run, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the export extra (pip install -e '.[dev]')")
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    assert load_served(run, device="cpu").info["engine"] == "PyTorch on cpu"
    export_run(run, log=lambda _: None)
    served = load_served(run, device="cpu")
    assert served.info["engine"] == "onnxruntime (onnx)"
    assert served.info["served_from"] == str(default_export_path(run))
    assert served.info["verification"]["passed"] is True and served.info["heat_maps"] is True
    photos = sorted((tiny_run[1] / "test").rglob("*.jpg"))
    images = np.stack([load_resized(photo, 96) for photo in photos])
    reference = served.trained.probabilities(torch.from_numpy(images)).numpy()
    assert np.allclose(served.probabilities(images), reference, atol=1e-4)
    shutil.copy(run / "last.pt", run / "best.pt")  # a later best checkpoint: the export no longer matches it
    assert load_served(run, device="cpu").info["engine"] == "PyTorch on cpu"
    alone = load_served(None, default_export_path(run))
    assert alone.trained is None and alone.info["heat_maps"] is False and alone.info["run"] is None


def test_uploaded_bytes_decode_as_predict_reads_the_file(tiny_run) -> None:
    photo = sorted((tiny_run[1] / "test").rglob("*.jpg"))[0]
    assert np.array_equal(decode_photo(photo.read_bytes(), 64), load_resized(photo, 64))
    for data, reason in [(b"", "empty file"), (b"GIF89a nonsense", "not an image"), (bomb_png(), "too many pixels"),
                         (photo.read_bytes()[:300], "(?i)truncated")]:
        with pytest.raises(BadPhoto, match=reason):
            decode_photo(data, 64)


def test_a_photo_over_max_pixels_is_refused_from_its_header(tiny_run) -> None:
    photo = sorted((tiny_run[1] / "test").rglob("*.jpg"))[0]
    width, height = Image.open(photo).size
    with pytest.raises(TooManyPixels, match=f"{width}x{height} is {width * height:,}, over this server's limit of "
                                            f"{width * height - 1:,}"):
        decode_photo(photo.read_bytes(), 64, max_pixels=width * height - 1)
    assert np.array_equal(decode_photo(photo.read_bytes(), 64, max_pixels=width * height), load_resized(photo, 64))
    with pytest.raises(TooManyPixels, match="decompression bomb"):
        decode_photo(bomb_png(), 64, max_pixels=width * height)

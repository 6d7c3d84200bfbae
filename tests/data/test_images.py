"""Tests for catsdogs.data.images: every colour mode becomes RGB, EXIF orientation is honoured, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsdogs.data.images import (MAX_IMAGE_PIXELS, TooSmall, describe_left_out, is_image_name, load_resized, load_rgb,
                                  resize_array, to_rgb)
from catsdogs.data.integrity import BOMB, TOO_SMALL, check_image
from tests.helpers import write_blank_png

SIZE = 16


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def assert_rgb(array: np.ndarray, size: int = SIZE) -> None:
    assert array.shape == (size, size, 3) and array.dtype == np.uint8


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    array = load_resized(save(Image.new("L", (20, 20), 100), tmp_path / "gray.png"), SIZE)
    assert_rgb(array)
    assert (array == 100).all()


def test_one_bit_black_and_white_becomes_rgb(tmp_path: Path) -> None:
    image = Image.new("1", (20, 20), 1)
    array = load_resized(save(image, tmp_path / "bw.png"), SIZE)
    assert_rgb(array)
    assert (array == 255).all()


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    # Pure cyan ink: no red, full green and blue. TIFF keeps the values exact.
    array = load_resized(save(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), tmp_path / "cyan.tif"), SIZE)
    assert_rgb(array)
    assert array[8, 8].tolist() == [0, 255, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    array = load_resized(save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), tmp_path / "red.jpg", quality=95),
                         SIZE)
    assert_rgb(array)
    red, green, blue = array[8, 8].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_palette_without_transparency_keeps_its_colours(tmp_path: Path) -> None:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    array = load_resized(save(image, tmp_path / "palette.png"), SIZE)
    assert_rgb(array)
    assert (array.reshape(-1, 3) == [10, 200, 30]).all()


def test_palette_with_transparency_composites_on_white(tmp_path: Path) -> None:
    # Left half index 0 (transparent), right half index 1 (opaque green).
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.paste(1, (10, 0, 20, 20))
    path = save(image, tmp_path / "transparent.png", transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    array = load_resized(path, 20)
    assert_rgb(array, 20)
    assert array[10, 2].tolist() == [255, 255, 255]
    assert array[10, 17].tolist() == [10, 200, 30]


def test_rgba_composites_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (20, 20), (200, 0, 0, 0))
    image.paste((200, 0, 0, 255), (10, 0, 20, 20))
    array = load_resized(save(image, tmp_path / "rgba.png"), 20)
    assert_rgb(array, 20)
    assert array[10, 2].tolist() == [255, 255, 255]  # fully transparent: white, whatever its colour
    assert array[10, 17].tolist() == [200, 0, 0]


def test_gray_with_alpha_becomes_rgb(tmp_path: Path) -> None:
    array = load_resized(save(Image.new("LA", (20, 20), (50, 255)), tmp_path / "la.png"), SIZE)
    assert_rgb(array)
    assert (array == 50).all()


def test_sixteen_bit_grayscale_becomes_rgb_using_the_full_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = save(Image.fromarray(ramp), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    array = load_resized(path, 64)
    assert_rgb(array, 64)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert array[0, 0, 0] == 0 and array[-1, -1, 0] == 255
    assert array[32, 0, 0] == pytest.approx(128, abs=2)  # the middle of the ramp is mid-gray


def test_to_rgb_leaves_rgb_alone() -> None:
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(image) is image


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40 wide x 20 tall JPEG, red on the left and blue on the right, tagged Orientation=6.

    Orientation 6 tells viewers to turn the stored pixels 90 degrees clockwise: the upright
    picture is 20 wide x 40 tall, red on top and blue below.
    """
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_turns_the_loaded_image(tmp_path: Path) -> None:
    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    assert load_rgb(path).size == (20, 40)
    array = load_resized(path, 32)
    top, bottom = array[4, 16].astype(int), array[27, 16].astype(int)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_a_large_jpeg_is_resized_and_keeps_its_content(tmp_path: Path) -> None:
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[:150] = (250, 250, 0)
    pixels[150:] = (0, 0, 250)
    path = save(Image.fromarray(pixels), tmp_path / "big.jpg", quality=95)
    array = load_resized(path, 48)
    assert_rgb(array, 48)
    assert np.abs(array[5, 24].astype(int) - (250, 250, 0)).max() < 12
    assert np.abs(array[42, 24].astype(int) - (0, 0, 250)).max() < 12


def test_resize_array_shrinks_and_grows_to_a_square() -> None:
    ramp = np.tile(np.linspace(0, 255, 30, dtype=np.uint8)[None, :, None], (20, 1, 3))
    grown = resize_array(ramp, 48)
    shrunk = resize_array(np.full((100, 80, 3), 77, dtype=np.uint8), 10)
    assert grown.shape == (48, 48, 3) and shrunk.shape == (10, 10, 3)
    assert (shrunk == 77).all()
    assert grown[0, 0, 0] < grown[0, 24, 0] < grown[0, 47, 0]  # the ramp still rises left to right


def test_resize_array_at_the_target_size_returns_the_same_pixels() -> None:
    array = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    assert np.array_equal(resize_array(array, 12), array)


@pytest.mark.parametrize(("name", "expected"), [("cat.jpg", True), ("CAT.JPG", True), ("a.jpeg", True),
                                                ("b.PNG", True), ("c.webp", True), ("d.tiff", True),
                                                ("notes.txt", False), ("Thumbs.db", False), ("jpg", False)])
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected


def test_a_file_that_is_not_an_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_text("not a photo")
    with pytest.raises(OSError):
        load_resized(path, SIZE)


# Pillow's own, process-wide limit as a program may have it: Pillow's default, what the catsdogs
# commands set (catsdogs.process), and none at all. catsdogs' bound holds under each.
PILLOW_LIMITS = {"pillow-default": 89_478_485, "catsdogs-commands": MAX_IMAGE_PIXELS, "unlimited": None}


@pytest.mark.parametrize("pillow_limit", PILLOW_LIMITS.values(), ids=PILLOW_LIMITS)
@pytest.mark.parametrize("side", [16_000, 30_000])  # 256 MP, just above MAX_IMAGE_PIXELS; 900 MP
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch, side: int,
                                                         pillow_limit: int | None) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    assert side * side > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    write_blank_png(path, side, side, header_only=True)
    with pytest.raises(Image.DecompressionBombError):
        load_resized(path, SIZE)
    assert check_image(str(path)).reason == BOMB  # split refuses it by the same bound


@pytest.mark.parametrize("width, height", [(1, 1), (9, 40), (40, 9)])
def test_a_photo_under_ten_pixels_on_a_side_is_refused_by_every_reader(tmp_path: Path, width: int,
                                                                       height: int) -> None:
    path = save(Image.new("RGB", (width, height), (200, 60, 60)), tmp_path / "tiny.png")
    with pytest.raises(TooSmall, match=f"^{width}x{height} pixels, under 10 on a side$"):
        load_resized(path, SIZE)  # training's cache and loaders, evaluate and predict
    assert check_image(str(path)).reason == TOO_SMALL  # split
    ten = save(Image.new("RGB", (10, 10), (200, 60, 60)), tmp_path / "ten.png")
    assert_rgb(load_resized(ten, SIZE))
    assert check_image(str(ten)).reason is None


@pytest.mark.parametrize(("pillow_limit", "refused"), [(MAX_IMAGE_PIXELS, False), (None, False),
                                                       (89_478_485, True)], ids=["catsdogs-commands", "unlimited",
                                                                                  "pillow-default"])
def test_a_196_megapixel_photo_passes_unless_the_program_limits_pillow_further(tmp_path: Path, monkeypatch,
                                                                              pillow_limit: int | None,
                                                                              refused: bool) -> None:
    """Under the catsdogs commands' setting a 196 MP photo is no bomb; a program whose Pillow refuses it
    (Pillow's default refuses above 179 MP) keeps its stricter limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    path = tmp_path / "big.png"
    write_blank_png(path, 14_000, 14_000, header_only=True)  # no pixel rows: it fails at decoding if not before
    check = check_image(str(path))
    assert (check.reason == BOMB) is refused, check


def test_a_100_megapixel_photo_is_no_bomb(tmp_path: Path) -> None:
    """Phones take 50-200 MP photos; a genuine 10000 x 10000 PNG decodes in split and in training."""
    path = tmp_path / "big.png"
    write_blank_png(path, 10_000, 10_000)
    check = check_image(str(path))
    assert (check.reason, check.width, check.height) == (None, 10_000, 10_000)
    assert_rgb(load_resized(path, SIZE))


def test_left_out_files_are_listed_a_few_at_a_time() -> None:
    many = [(Path(f"notes/{i}.txt"), "not named as a photo") for i in range(5)]
    assert describe_left_out([(Path("a/.DS_Store"), "hidden file"), *many]) == [
        "a/.DS_Store: hidden file", "5 files: not named as a photo (e.g. notes/0.txt, notes/1.txt, notes/2.txt)"]
    assert describe_left_out([]) == []

"""The split reader and the decode-once cache: invalidation, equivalence, memory mapping."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs.data.cache import CACHE_DIR, BatchSource, fits_on_gpu, load_cache, read_split
from catsdogs.data.images import load_resized
from catsdogs.data.transforms import eval_preset, train_preset
from catsdogs.errors import CatsdogsError
from tests.helpers import split_fixture

ROOT = Path(__file__).resolve().parents[2]


data = split_fixture((10, 3, 3), size=40)


def cache_files(data: Path) -> list[str]:
    return sorted(p.name for p in (data / CACHE_DIR).glob("*.npy"))


def test_cache_is_a_memory_mapped_uint8_array_of_the_resized_images(data: Path) -> None:
    split = read_split(data, "train")
    images = load_cache(split, 32, progress=False)
    assert isinstance(images, np.memmap)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    for index in (0, 7, 19):
        assert np.array_equal(images[index], load_resized(split.paths[index], 32))


def test_a_second_load_reuses_the_cache(data: Path, monkeypatch) -> None:
    split = read_split(data, "train")
    load_cache(split, 32, progress=False)
    monkeypatch.setattr("catsdogs.data.cache._build_cache", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    assert load_cache(read_split(data, "train"), 32, progress=False).shape[0] == 20


@pytest.mark.parametrize("change", ["add", "remove", "modify", "size"])
def test_cache_is_rebuilt_when_the_split_or_size_changes(data: Path, change: str) -> None:
    split = read_split(data, "train")
    old = load_cache(split, 32, progress=False)
    first = cache_files(data)
    cats = sorted((data / "train" / "Cat").iterdir())
    size = 32
    if change == "add":
        Image.new("RGB", (40, 40), (255, 255, 0)).save(data / "train" / "Cat" / "new.jpg")
    elif change == "remove":
        cats[0].unlink()
    elif change == "modify":
        Image.new("RGB", (40, 40), (0, 255, 0)).save(cats[0])
        os.utime(cats[0], ns=(1, 1))  # even with an old timestamp the size differs
    else:
        size = 36
    split = read_split(data, "train")
    new = load_cache(split, size, progress=False)
    second = cache_files(data)
    assert second != first
    assert len(new) == len(split)
    for index in range(len(split)):
        assert np.array_equal(new[index], load_resized(split.paths[index], size))
    if change == "size":
        assert old.shape[1] == 32 and new.shape[1] == 36
    # Only the newest cache of a split and size is kept on disk.
    assert len([name for name in second if name.startswith(f"train-{size}px-")]) == 1


def test_rebuild_mode_rebuilds_and_off_mode_reads_files(data: Path) -> None:
    split = read_split(data, "train")
    load_cache(split, 32, progress=False)
    before = (data / CACHE_DIR / cache_files(data)[0]).stat().st_mtime_ns
    load_cache(split, 32, mode="rebuild", progress=False)
    assert (data / CACHE_DIR / cache_files(data)[0]).stat().st_mtime_ns != before
    assert load_cache(split, 32, mode="off", progress=False) is None


def test_cached_and_uncached_batches_are_identical(data: Path) -> None:
    split = read_split(data, "train")
    preset = train_preset(32, hflip=0.5)
    cached = BatchSource(split, preset, load_cache(split, 32, progress=False))
    files = BatchSource(split, preset, None, workers=1)
    order_a = cached.order(8, torch.Generator().manual_seed(3))
    order_b = files.order(8, torch.Generator().manual_seed(3))
    assert all(np.array_equal(a, b) for a, b in zip(order_a, order_b))
    (images_a, labels_a), (images_b, labels_b) = next(cached.batches(order_a)), next(files.batches(order_b))
    assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
    out_a = preset(images_a, torch.Generator().manual_seed(5))
    out_b = preset(images_b, torch.Generator().manual_seed(5))
    assert torch.equal(out_a, out_b)


def test_eval_order_is_file_order_and_covers_every_image(data: Path) -> None:
    split = read_split(data, "val")
    source = BatchSource(split, eval_preset(32), load_cache(split, 32, progress=False))
    order = source.order(4, None)
    assert np.concatenate(order).tolist() == list(range(len(split)))
    labels = torch.cat([labels for _, labels in source.batches(order)])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_an_unreadable_image_is_left_out_of_the_cache_and_reported(data: Path) -> None:
    victim = sorted((data / "train" / "Dog").iterdir())[2]
    victim.write_bytes(b"not a jpeg at all")
    split = read_split(data, "train")
    load_cache(split, 32, progress=False)
    assert split.unreadable == [victim]
    source = BatchSource(split, eval_preset(32), load_cache(read_split(data, "train"), 32, progress=False))
    assert len(source) == 19


def test_read_split_errors_say_what_to_do(tmp_path: Path, data: Path) -> None:
    with pytest.raises(CatsdogsError, match=r"nowhere does not exist: run `catsdogs split SOURCE --out .*nowhere` first \(SOURCE: PetImages"):
        read_split(tmp_path / "nowhere", "train")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(CatsdogsError, match="photo.jpg is a file, not a split folder"):
        read_split(tmp_path / "photo.jpg", "train")
    with pytest.raises(CatsdogsError, match="has no holdout/ folder"):
        read_split(data, "holdout")
    with pytest.raises(CatsdogsError, match=r"classes \['Cat', 'Dog'\], but the model was trained on"):
        read_split(data, "test", ["Bird", "Cat"])


def test_a_device_resident_cache_serves_the_same_batches(data: Path) -> None:
    """The path a GPU takes when the cache fits in its memory, exercised on the CPU."""
    split = read_split(data, "train")
    images = load_cache(split, 32, progress=False)
    mapped = BatchSource(split, eval_preset(32), images)
    resident = BatchSource(split, eval_preset(32), images, device=torch.device("cpu"), resident=True)
    assert resident.on_device is not None and mapped.on_device is None
    order = mapped.order(6, torch.Generator().manual_seed(2))
    for (a, la), (b, lb) in zip(mapped.batches(order), resident.batches(order)):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert BatchSource(split, eval_preset(32), images, device=torch.device("cpu")).on_device is None


def test_the_gpu_cache_counts_memory_torch_holds_but_does_not_use(monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 30 * gib)  # an earlier run of compare
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 5 * gib)
    cuda = torch.device("cuda", 0)
    assert fits_on_gpu(13 * gib, cuda)  # 40% of 10 free + 25 held unused
    assert not fits_on_gpu(14 * gib, cuda)
    assert not fits_on_gpu(1, torch.device("cpu"))


def test_a_cache_that_cannot_fit_is_refused_with_its_size_and_leaves_nothing(data: Path, monkeypatch) -> None:
    import collections

    from catsdogs.data import cache as data_module

    split = read_split(data, "train")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(data_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50_000, 50_000))
    with pytest.raises(CatsdogsError, match=r"the decoded cache of 20 photos at 64px needs 0.2 MB in .*\.cache, "
                                            r"which has 0.1 MB free: .*--cache off"):
        load_cache(split, 64, progress=False)  # 20 x 64 x 64 x 3 = 245,760 bytes
    monkeypatch.undo()

    def no_memory(path, **kwargs):  # the file is made, then mapping it fails
        Path(path).write_bytes(b"\0" * 128)
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(np.lib.format, "open_memmap", no_memory)
    with pytest.raises(OSError, match="Cannot allocate memory"):
        load_cache(split, 64, progress=False)
    assert not [p.name for p in (data / CACHE_DIR).iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_a_folder_that_cannot_be_written_reads_the_images_every_epoch(data: Path, monkeypatch, capsys,
                                                                      code: int) -> None:
    def refused(path, **kwargs):  # what creating the cache file raises there
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(np.lib.format, "open_memmap", refused)
    assert load_cache(read_split(data, "train"), 32, progress=False) is None
    assert f"({os.strerror(code)}); reading the images every epoch" in capsys.readouterr().err


def test_a_disk_that_fills_during_the_build_is_the_same_error_as_one_found_full_before(data: Path,
                                                                                        monkeypatch) -> None:
    real_open = io.open

    def fill_up(file, mode="r", *args, **kwargs):  # a file opened for writing takes half its data, then ENOSPC
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            def write(data):
                handle.__class__.write(handle, data[:len(data) // 2])
                handle.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write = write
        return handle

    monkeypatch.setattr(io, "open", fill_up)  # the metadata file, written after the array
    with pytest.raises(CatsdogsError, match=r"the decoded cache of 20 photos at 32px needs 0.1 MB in .*\.cache, "
                                            r"which has .* free: .*--cache off"):
        load_cache(read_split(data, "train"), 32, progress=False)
    monkeypatch.undo()
    assert list((data / CACHE_DIR).iterdir()) == []  # no half-written metadata, and no array without it
    assert load_cache(read_split(data, "train"), 32, progress=False) is not None


def test_the_partial_cache_of_a_killed_build_is_removed(data: Path) -> None:
    split = read_split(data, "train")
    load_cache(split, 32, progress=False)
    cache = data / CACHE_DIR
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    killed = cache / f".train-32px-0123456789abcdef.npy.{dead}.tmp"
    abandoned = cache / f".train-512px-0123456789abcdef.npy.{dead}.tmp"  # killed at a size never built again
    building = cache / f".train-32px-fedcba9876543210.npy.{os.getpid()}.tmp"  # a build still running
    for partial in (killed, abandoned, building):
        partial.write_bytes(b"partial")
    (data / "train" / "Cat" / "extra.jpg").write_bytes((data / "train" / "Cat").glob("*.jpg").__next__().read_bytes())
    load_cache(read_split(data, "train"), 32, progress=False)  # another file list: a new cache is built
    assert not killed.exists() and not abandoned.exists() and building.exists()

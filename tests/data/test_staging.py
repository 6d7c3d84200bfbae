"""Tests for catsdogs.data.staging: re-runs, --force, foreign files, link modes, safe output folders, interruption."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsdogs.data import staging
from catsdogs.data.split import split_dataset
from catsdogs.data.staging import TRAIN_CACHE, check_out, place_file, write_atomically
from catsdogs.errors import CatsdogsError
from tests.helpers import children, make_classes, read_rows, write_photo


def test_a_rerun_with_the_same_arguments_does_nothing(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 8, "Dog": 8})
    out = tmp_path / "data"
    first = split_dataset(source, out, jobs=2, progress=False)
    before = (out.stat().st_ino, (out / "manifest.csv").stat().st_mtime_ns)
    again = split_dataset(source, out, jobs=2, progress=False)
    assert again.unchanged and not first.unchanged
    assert (out.stat().st_ino, (out / "manifest.csv").stat().st_mtime_ns) == before
    assert again.counts == first.counts and again.found == first.found
    assert "nothing to do" in again.format()
    (out / TRAIN_CACHE).mkdir()
    (out / TRAIN_CACHE / "train-96px-0123.npy").write_bytes(b"decoded arrays")  # as catsdogs train leaves
    assert split_dataset(source, out, jobs=2, progress=False).unchanged


def test_the_train_cache_folder_name_matches_catsdogs_data():
    from catsdogs.data.cache import CACHE_DIR  # imports torch, so only here

    assert TRAIN_CACHE == CACHE_DIR


def test_other_arguments_are_refused_unless_forced_and_foreign_files_always(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 8, "Dog": 8})
    out = tmp_path / "data"
    split_dataset(source, out, jobs=2, progress=False)
    with pytest.raises(CatsdogsError, match=r"split with other arguments: seed 42 \(now 7\).*--force"):
        split_dataset(source, out, seed=7, progress=False)
    forced = split_dataset(source, out, seed=7, force=True, jobs=2, progress=False)
    assert not forced.unchanged and '"seed": 7' in (out / "split.json").read_text()

    (out / "train" / "Cat" / "mine.jpg").write_bytes(b"x")
    for force in (False, True):  # a file of the user's is never deleted, not even with --force
        with pytest.raises(CatsdogsError, match=r"holds 1 file\(s\) that split did not write "
                                                r"\(e.g. train/Cat/mine.jpg\): move them out"):
            split_dataset(source, out, seed=7, force=force, progress=False)
    assert (out / "train" / "Cat" / "mine.jpg").read_bytes() == b"x"
    (out / "train" / "Cat" / "mine.jpg").unlink()

    write_photo(source / "Cat" / "new.jpg", seed=999)
    with pytest.raises(CatsdogsError, match=r"changed since .* was split .*--force"):
        split_dataset(source, out, seed=7, progress=False)

    mine = tmp_path / "runs"  # a mistyped --out naming a folder of the user's
    (mine / "adam").mkdir(parents=True)
    (mine / "adam" / "best.pt").write_bytes(b"weights")
    for force in (False, True):
        with pytest.raises(CatsdogsError, match=r"already exists and was not made by catsdogs split: choose "
                                                r"another --out \(split deletes no folder it did not make"):
            split_dataset(source, mine, force=force, progress=False)
    assert (mine / "adam" / "best.pt").read_bytes() == b"weights"


@pytest.mark.parametrize("mode", ["link", "copy", "symlink"])
def test_force_keeps_a_photo_the_user_put_under_a_split_name(tmp_path, mode):
    source = make_classes(tmp_path / "src", {"Cat": 6, "Dog": 6})
    out = tmp_path / "data"
    split_dataset(source, out, mode=mode, jobs=2, progress=False)
    rows = read_rows(out / "manifest.csv")
    edited = source / rows[0]["path"]  # the user edits a source photo in place: split may replace its copy
    with edited.open("r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    assert not split_dataset(source, out, mode=mode, force=True, jobs=2, progress=False).unchanged

    rows = read_rows(out / "manifest.csv")
    replaced = out / rows[1]["file"]  # a photo of the user's under a name split wrote
    replaced.unlink()
    write_photo(replaced, seed=4242)
    kept = replaced.read_bytes()
    with pytest.raises(CatsdogsError, match=r"holds 1 photo\(s\) that are no longer what split wrote there "
                                            rf"\(e.g. {rows[1]['file']}\): move them out"):
        split_dataset(source, out, mode=mode, seed=7, force=True, progress=False)
    assert replaced.read_bytes() == kept
    replaced.unlink()  # moved out: --force goes ahead
    assert '"seed": 7' not in (out / "split.json").read_text()
    split_dataset(source, out, mode=mode, seed=7, force=True, jobs=2, progress=False)
    assert '"seed": 7' in (out / "split.json").read_text()


@pytest.mark.parametrize("mode", ["link", "copy", "symlink"])
def test_modes_link_copy_or_point_at_the_source(tmp_path, mode):
    source = make_classes(tmp_path / "src", {"Cat": 4, "Dog": 4})
    split_dataset(source, tmp_path / "out", mode=mode, jobs=1, progress=False)
    row = read_rows(tmp_path / "out" / "manifest.csv")[0]
    target, original = tmp_path / "out" / row["file"], source / row["path"]
    assert target.read_bytes() == original.read_bytes()
    assert target.is_symlink() == (mode == "symlink")
    assert os.path.samefile(target, original) == (mode != "copy")


# Runs a split in a child process that stops after its fifth photo until a signal comes, so the signal lands
# mid-write however busy the machine is (a slowed link raced the test's polling). Exit 3: no signal came.
SLOW_SPLIT = """
import os, sys, time
link, linked = os.link, []
def waiting_link(*args, **kwargs):
    link(*args, **kwargs)
    linked.append(args)
    if len(linked) == 5:
        time.sleep(30)
        os._exit(3)
os.link = waiting_link
from catsdogs.data.split import split_dataset
split_dataset(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]), force=True, jobs=1, progress=False)
"""


def interrupt_split(source: Path, out: Path, seed: int, sig: int) -> int:
    """Start a split that waits after its fifth photo, send `sig` once its staging folder holds them; return its
    exit code."""
    stale = set(out.parent.glob(f".{out.name}.staging-*"))
    child = subprocess.Popen([sys.executable, "-c", SLOW_SPLIT, str(source), str(out), str(seed)])
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and child.poll() is None:
            fresh = set(out.parent.glob(f".{out.name}.staging-*")) - stale
            staged = [p for folder in fresh for p in folder.rglob("*.jpg")]
            if len(staged) >= 5:
                child.send_signal(sig)
                break
            time.sleep(0.01)
        code = child.wait(timeout=60)
        assert code != 3, "the split waited for a signal that never reached it"
        return code
    finally:
        if child.poll() is None:
            child.kill()


def test_a_killed_run_leaves_no_output_and_the_next_run_completes(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 40, "Dog": 40})
    out = tmp_path / "data"
    assert interrupt_split(source, out, 42, signal.SIGKILL) == -signal.SIGKILL
    assert not out.exists()
    assert list(tmp_path.glob(".data.staging-*")), "the kill should land while staging is being written"
    summary = split_dataset(source, out, jobs=2, progress=False)
    assert summary.kept == 80 and not list(tmp_path.glob(".data.*"))
    split_dataset(source, tmp_path / "reference", jobs=2, progress=False)
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "reference" / "manifest.csv").read_bytes()


def test_an_interrupted_replacement_keeps_the_previous_split(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 40, "Dog": 40})
    out = tmp_path / "data"
    split_dataset(source, out, jobs=2, progress=False)
    before = (out / "manifest.csv").read_bytes()
    assert interrupt_split(source, out, 7, signal.SIGKILL) == -signal.SIGKILL
    assert (out / "manifest.csv").read_bytes() == before
    assert interrupt_split(source, out, 7, signal.SIGINT) != 0
    assert (out / "manifest.csv").read_bytes() == before
    assert split_dataset(source, out, jobs=2, progress=False).unchanged
    assert not list(tmp_path.glob(".data.*"))  # the SIGKILLed run's staging was cleaned up too


def test_a_run_killed_between_the_two_renames_gets_its_old_split_back(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 5, "Dog": 5})
    out = tmp_path / "data"
    split_dataset(source, out, jobs=1, progress=False)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.rename(tmp_path / f".data.old-{finished.stdout.strip()}-x1")
    assert split_dataset(source, out, jobs=1, progress=False).unchanged
    assert not list(tmp_path.glob(".data.*"))


def test_a_hard_link_across_file_systems_falls_back_to_a_copy(tmp_path, monkeypatch):
    source = make_classes(tmp_path / "src", {"Cat": 3, "Dog": 3})

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(staging.os, "link", cross_device)
    original = source / "Cat" / "cat.0.jpg"
    assert place_file(original, tmp_path / "one.jpg", "link")
    assert (tmp_path / "one.jpg").read_bytes() == original.read_bytes()
    assert not os.path.samefile(tmp_path / "one.jpg", original)
    summary = split_dataset(source, tmp_path / "out", jobs=1, progress=False)
    assert summary.copied == summary.kept == 6
    assert "(hard links, 6 copied across filesystems)" in summary.format()


def test_the_working_or_home_folder_is_never_an_out(tmp_path, monkeypatch):
    source, work = tmp_path / "src", tmp_path / "work" / "here"
    source.mkdir()
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (work, tmp_path / "work"):
        with pytest.raises(CatsdogsError, match=r"holds the current or home folder: choose a new folder"):
            check_out(source, out)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(CatsdogsError, match=r"holds the current or home folder"):
        check_out(source, tmp_path / "home")
    check_out(source, tmp_path / "data")  # a new folder beside them is fine


def test_a_failed_write_leaves_the_previous_out_and_no_staging_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "kept.txt").write_text("previous")
    with pytest.raises(CatsdogsError, match=r"could not write the split beside .*data'.*check free space"):
        with write_atomically(out) as folder:
            (folder / "half.txt").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(KeyboardInterrupt):
        with write_atomically(out) as folder:
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and (out / "kept.txt").read_text() == "previous"
    with write_atomically(out) as folder:
        (folder / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_second_ctrl_c_does_not_cut_the_cleanup_short(tmp_path, monkeypatch):
    rmtree = shutil.rmtree

    def interrupted_rmtree(path, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # another Ctrl-C, just as the cleanup starts
        rmtree(path, **kwargs)

    monkeypatch.setattr(staging.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        with write_atomically(tmp_path / "data") as folder:
            (folder / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_twice_while_decoding_ends_at_once_and_leaves_nothing(tmp_path):
    """Two SIGINTs to the process group (a double Ctrl-C, or `timeout -s INT`) while workers decode."""
    y, x = np.mgrid[0:1500, 0:2000]
    photo = tmp_path / "photo.jpg"  # smooth, so small on disk but slow enough to decode
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(photo, quality=90)
    for name in ("Cat", "Dog"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(300):  # duplicates are only found after every file is decoded
            os.link(photo, tmp_path / "src" / name / f"{i}.jpg")
    out = tmp_path / "split-out"
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "catsdogs", "split", "src", "--out", out.name, "--jobs", "2"],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(children(child.pid)) < 2 and time.monotonic() < deadline:  # the two decoding workers
                time.sleep(0.05)
            assert len(children(child.pid)) == 2, "the decoding workers never started"
            time.sleep(0.3)  # they are decoding by now: 600 large photos take them several seconds
            for _ in range(2):
                os.killpg(child.pid, signal.SIGINT)
                time.sleep(0.02)
            returncode = child.wait(timeout=30)
            with pytest.raises(ProcessLookupError):
                os.killpg(child.pid, 0)  # no process of the group, no worker, is left
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
    errors = (tmp_path / "stderr.txt").read_text()
    # The command line ignores further Ctrl-C once it has begun to exit, so the code is 130, not -SIGINT.
    assert returncode == 130
    assert errors.count("interrupted") == 1 and "Traceback" not in errors and "Exception ignored" not in errors
    assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*"))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_the_split_folder_gets_the_mode_the_umask_gives(tmp_path, umask):
    source = make_classes(tmp_path / "src", {"Cat": 3, "Dog": 3})
    old = os.umask(umask)
    try:
        split_dataset(source, tmp_path / "out", jobs=1, progress=False)
    finally:
        os.umask(old)
    for folder in (tmp_path / "out", tmp_path / "out" / "train" / "Cat"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # as a plain mkdir makes it

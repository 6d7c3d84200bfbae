"""Tests for catsdogs.atomic: a file is replaced whole or not at all, and errors name the file meant."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest

from catsdogs import atomic
from catsdogs.atomic import atomic_write, write_text_atomic


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    with atomic_write(path) as handle:
        handle.write(b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_writer_failing_midway_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(path) as handle:
            handle.write(b"half of a new ")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_failed_first_write_leaves_no_file_at_all(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "best.pt") as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    write_text_atomic(path, "epoch,loss\n1,0.5\n")
    write_text_atomic(path, "epoch,loss\n1,0.5\n2,0.4\n")
    assert path.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_a_folder_that_refuses_the_write_is_named_by_the_file_meant(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "history.csv"

    def read_only(prefix, suffix, dir):
        raise PermissionError(errno.EPERM, "Operation not permitted", f"{dir}/{prefix}k2buxi3g{suffix}")

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(OSError) as info:
            write_text_atomic(target, "epoch\n")
    assert info.value.filename == str(target) and info.value.strerror == "Operation not permitted"

    def refused(source, destination):  # made, but cannot take the name (immutable file there)
        raise PermissionError(errno.EPERM, "Operation not permitted", source)

    monkeypatch.setattr(atomic.os, "replace", refused)
    with pytest.raises(OSError) as info:
        write_text_atomic(target, "epoch\n")
    assert info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary file is gone

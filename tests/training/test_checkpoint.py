"""Tests for catsdogs.training.checkpoint: saving atomically, and loading only safe catsdogs checkpoints."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

from catsdogs.atomic import write_text_atomic
from catsdogs.errors import CatsdogsError
from catsdogs.training.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint


def test_save_then_load_round_trips_a_plain_dict(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint({"model": weights, "classes": ["Cat", "Dog"], "epoch": 3, "config": {"lr": 0.01}}, path)
    state = load_checkpoint(path)
    assert (state["format"], state["version"]) == (FORMAT, VERSION)
    assert torch.equal(state["model"]["w"], weights["w"])
    assert (state["classes"], state["epoch"], state["config"]) == (["Cat", "Dog"], 3, {"lr": 0.01})
    # Plain values only: torch's safe loader reads it without catsdogs.
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_saving_into_a_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "last.pt"
    with pytest.raises(CatsdogsError, match="could not write checkpoint") as info:
        save_checkpoint({"epoch": 1}, path)
    assert str(path) in str(info.value)


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatsdogsError, match="does not exist") as info:
        load_checkpoint(tmp_path / "best.pt")
    assert str(tmp_path / "best.pt") in str(info.value)


class WritesAMarker:
    """Unpickling this runs `Path.write_text(marker, ...)`: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


def test_a_malicious_pickle_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, "model": WritesAMarker(marker)}, path)
    with pytest.raises(CatsdogsError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_a_truncated_checkpoint_is_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(64, 64)}, "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CatsdogsError, match="not a readable checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(CatsdogsError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [{"model": {"w": torch.zeros(2)}}, [1, 2, 3], {"format": "lightning"}],
                         ids=["dict", "list", "other-format"])
def test_a_torch_file_from_elsewhere_is_not_a_catsdogs_checkpoint(tmp_path: Path, content) -> None:
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(CatsdogsError, match="is not a catsdogs checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", [
    "not a checkpoint\n",
    "Lorem ipsum dolor sit amet\n",
    "hello world\n",  # torch's safe unpickler raises KeyError on this one
    "epoch,train_loss\n1,0.5\n",  # ... and IndexError on these two
    "random text file",
])
def test_a_text_file_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(CatsdogsError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_checkpoint_from_a_newer_catsdogs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    save_checkpoint({"version": VERSION + 1, "epoch": 1}, path)
    with pytest.raises(CatsdogsError, match=f"newer catsdogs \\(format {VERSION + 1}\\)") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_atomic_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "shared.txt", "x")
        save_checkpoint({"model": {}}, tmp_path / "m.pt")
    finally:
        os.umask(old)
    for name in ("shared.txt", "m.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # not mkstemp's private 0600


def test_first_line_cuts_a_long_message_at_a_word_and_says_so() -> None:
    from catsdogs.errors import first_line

    assert first_line(RuntimeError("short\nsecond line")) == "short"
    assert first_line(RuntimeError("word " * 60), 50) == "word word word word word word word word word ..."
    assert first_line(RuntimeError("")) == "RuntimeError"

"""Tests for catsdogs.figures: headless figures whose font problems are one note, not a warning per glyph."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from catsdogs import figures
from catsdogs.inference.evaluate import save_confusion_figure


def test_characters_the_font_lacks_are_one_note(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "_told", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that got through would fail here
        for name in ("a.png", "b.png"):
            save_confusion_figure(np.array([[3, 1], [0, 4]]), ["chat noir é", "chien 犬"], tmp_path / name, "test")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    assert capsys.readouterr().err == "note: the figures' font has no 犬: those characters show as boxes\n"


def test_other_warnings_still_reach_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "_told", {"glyphs"})  # the note was given already: said once a process
    fig, _ = figures.pyplot().subplots()

    def savefig(target, **kwargs):
        warnings.warn("Glyph 29356 (\\N{CJK UNIFIED IDEOGRAPH-72AC}) missing from font(s) DejaVu Sans.", UserWarning)
        warnings.warn("something else went wrong", UserWarning)

    monkeypatch.setattr(fig, "savefig", savefig)
    with pytest.warns(UserWarning) as caught:
        figures.save_figure(fig, tmp_path / "c.png")
    assert [str(w.message) for w in caught] == ["something else went wrong"]


def test_a_save_that_fails_midway_leaves_the_earlier_figure_whole(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "confusion_matrix.png"
    save_confusion_figure(np.array([[3, 1], [0, 4]]), ["Cat", "Dog"], path, "test")
    earlier = path.read_bytes()
    fig, _ = figures.pyplot().subplots()

    def savefig(target, **kwargs):  # a crash partway through writing
        with open(target, "wb") if isinstance(target, (str, os.PathLike)) else contextlib.nullcontext(target) as out:
            out.write(earlier[:100])
        raise MemoryError("out of memory while rendering")

    monkeypatch.setattr(fig, "savefig", savefig)
    with pytest.raises(MemoryError):
        figures.save_figure(fig, path)
    assert path.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["confusion_matrix.png"]  # no temporary file left


@pytest.mark.parametrize(("name", "start"), [("a.png", b"\x89PNG"), ("a.SVG", b"<?xml"), ("a.pdf", b"%PDF")])
def test_the_format_still_follows_the_suffix(tmp_path: Path, name: str, start: bytes) -> None:
    fig, ax = figures.pyplot().subplots()
    ax.plot([0, 1], [1, 0])
    figures.save_figure(fig, tmp_path / name)
    assert (tmp_path / name).read_bytes().startswith(start)
    assert [p.name for p in tmp_path.iterdir()] == [name]

"""Tests for catsdogs.training.runs: fresh numbered run folders, the most recent run, checkpoint names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catsdogs.errors import CatsdogsError
from catsdogs.training.runs import latest_run, list_runs, new_run_dir, resolve_checkpoint


def make_run(folder: Path, **mtimes: float) -> Path:
    """A run folder with config.yaml (and any of history_csv, last_pt) stamped at the given times."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, when in {"config_yaml": 1_000.0, **mtimes}.items():
        path = folder / key.replace("_", ".")
        path.write_text("optim: adam\n" if key == "config_yaml" else "x")
        os.utime(path, (when, when))
    return folder


def test_new_run_dirs_are_numbered_from_two(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "adam"
    made = [new_run_dir(base) for _ in range(3)]
    assert made == [base, tmp_path / "runs" / "adam-2", tmp_path / "runs" / "adam-3"]
    assert all(path.is_dir() for path in made)
    assert new_run_dir(tmp_path / "runs" / "momentum") == tmp_path / "runs" / "momentum"


def test_a_new_run_dir_never_reuses_a_folder_even_with_a_gap(tmp_path: Path) -> None:
    (tmp_path / "adam").mkdir()
    (tmp_path / "adam-2").mkdir()
    (tmp_path / "adam-2" / "history.csv").write_text("kept")
    assert new_run_dir(tmp_path / "adam") == tmp_path / "adam-3"
    assert (tmp_path / "adam-2" / "history.csv").read_text() == "kept"


def test_latest_run_is_the_most_recently_active(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root / "adam", config_yaml=1_000, history_csv=5_000, best_pt=5_000)  # started first, trained last
    make_run(root / "momentum", config_yaml=3_000, best_pt=3_000)
    make_run(root / "vanilla-sgd", config_yaml=2_000, last_pt=4_000)
    assert list_runs(root) == [root / "momentum", root / "vanilla-sgd", root / "adam"]
    assert latest_run(root) == root / "adam"
    os.utime(root / "momentum" / "config.yaml", (9_000, 9_000))
    assert latest_run(root) == root / "momentum"
    make_run(root / "r18", config_yaml=10_000)  # stopped before its first save: nothing to use
    assert list_runs(root)[-1] == root / "r18" and latest_run(root) == root / "momentum"


def test_runs_are_found_at_any_depth_and_folders_without_config_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root / "study" / "adam", config_yaml=2_000)
    (root / "scratch").mkdir()
    (root / "scratch" / "history.csv").write_text("not a run: no config.yaml")
    assert list_runs(root) == [root / "study" / "adam"]


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    assert list_runs(tmp_path / "runs") == []
    with pytest.raises(CatsdogsError, match="no runs under .*runs/: train one with `catsdogs train --optim adam`"):
        latest_run(tmp_path / "runs")
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(CatsdogsError, match="no runs under"):
        latest_run(tmp_path / "runs")


@pytest.mark.parametrize("which", ["best", "last"])
def test_resolve_checkpoint_by_name(tmp_path: Path, which: str) -> None:
    run = make_run(tmp_path / "adam")
    with pytest.raises(CatsdogsError, match=f"has no {which}.pt") as info:
        resolve_checkpoint(run, which)
    assert str(run) in str(info.value)
    (run / f"{which}.pt").write_bytes(b"x")
    assert resolve_checkpoint(run, which) == run / f"{which}.pt"


def test_resolve_checkpoint_by_path(tmp_path: Path) -> None:
    run = make_run(tmp_path / "adam")
    other = tmp_path / "epoch3.pt"
    with pytest.raises(CatsdogsError, match="epoch3.pt does not exist \\(use best, last or a .pt file\\)"):
        resolve_checkpoint(run, str(other))
    other.write_bytes(b"x")
    assert resolve_checkpoint(run, str(other)) == other


def test_a_run_stopped_in_its_first_epoch_points_to_last_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(CatsdogsError, match="no best.pt yet .* --checkpoint last .* `catsdogs train --resume"):
        resolve_checkpoint(run, "best")
    assert resolve_checkpoint(run, "last") == run / "last.pt"

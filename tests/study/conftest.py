"""Fixtures the study tests share: one tiny split, and one study of it run one run after another, the
reference that both `--jobs` (test_parallel) and `--ray` (test_ray) must equal. Made once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs.study.compare import run_study
from tests.helpers import STUDY_SIZE, quiet, tiny_spec, write_tiny_split


@pytest.fixture(scope="session")
def study_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The split the shared studies run on; tests must not write into it."""
    return write_tiny_split(tmp_path_factory.mktemp("study-split"), per_class=(8, 4, 4), size=STUDY_SIZE)


@pytest.fixture(scope="session")
def straight_study(study_split: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_spec`'s study of `study_split`, one run after another in this process at 1 thread per run;
    tests must not write into it."""
    out = tmp_path_factory.mktemp("straight") / "study"
    assert run_study(tiny_spec(study_split, out, threads_per_run=1), progress=False, log=quiet).status == "complete"
    return out

"""The study folder (catsdogs/study/layout.py): summary.json and tuning.json read and written as today's code writes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from catsdogs.study import layout
from catsdogs.study.layout import StudyFolder, Summary, TuningRecord
from catsdogs.study.report_text import format_report
from tests.helpers import literals_outside

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "study-387faf5"


def test_a_summary_written_before_the_layout_loads_and_writes_back_identical(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "summary.json", tmp_path / layout.SUMMARY_FILE)
    folder = StudyFolder(tmp_path)
    summary = folder.read_summary()
    assert summary.best_chosen_by == "val_balanced_acc" and summary.ranking[0].optim == "adam"
    assert summary.sweep is not None and summary.sweep.optims["adam"].runs == 3
    assert summary.adjacent[0].test is not None and summary.adjacent[0].test.n == 3
    folder.write_summary(summary)
    assert folder.summary_path.read_text(encoding="utf-8") == (FIXTURE / "summary.json").read_text(encoding="utf-8")


def test_the_report_reads_the_same_text_off_the_typed_summary() -> None:
    summary = Summary.from_dict(json.loads((FIXTURE / "summary.json").read_text(encoding="utf-8")))
    assert format_report(summary) == (FIXTURE / "report.md").read_text(encoding="utf-8")


def test_a_tuning_record_written_before_the_layout_writes_back_identical(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "tuning.json", tmp_path / layout.TUNING_FILE)
    folder = StudyFolder(tmp_path)
    record = folder.read_tuning()
    assert [row.optim for row in record.rows if row.chosen] == ["adam", "momentum", "minibatch-sgd"]
    folder.write_tuning(record)
    assert folder.tuning_path.read_text(encoding="utf-8") == (FIXTURE / "tuning.json").read_text(encoding="utf-8")
    assert StudyFolder(tmp_path / "none").read_tuning() is None


def test_older_files_without_best_chosen_by_take_the_one_default() -> None:
    values = json.loads((FIXTURE / "summary.json").read_text(encoding="utf-8"))
    del values["best_chosen_by"], values["sweep"]["best_chosen_by"]
    summary = Summary.from_dict(values)
    assert summary.best_chosen_by == summary.sweep.best_chosen_by == "val_acc"
    assert TuningRecord.from_dict(values["sweep"]).best_chosen_by == "val_acc"
    assert "| run | status | epochs | best epoch | its val accuracy |" in format_report(summary)


def test_the_folder_names_its_runs_as_compare_and_the_report_do(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path)
    assert folder.run_dir("adam", 42) == tmp_path / "runs" / "adam-seed42"
    assert folder.sweep_run_dir("momentum", 0.0316) == tmp_path / "sweep" / "momentum-lr0.0316"
    assert folder.entry_path(layout.run_entry("adam-seed42")) == folder.run_dir("adam", 42)
    assert folder.report_path.name == "report.md" and folder.page_path.name == "report.html"


# The run folder's own page and figure share two of these names; their home is catsdogs/training/runs.py.
RUN_FOLDER_FILES = {("catsdogs/training/runs.py", layout.REPORT_PAGE), ("catsdogs/training/runs.py", layout.CURVES_FIGURE)}


def test_each_study_file_name_is_written_in_one_module() -> None:
    """A study folder's file names are string literals in catsdogs/study/layout.py alone (issue 25)."""
    names = {layout.STUDY_FILE, layout.TUNING_FILE, layout.SUMMARY_FILE, layout.REPORT_FILE, layout.REPORT_PAGE,
             layout.CURVES_FIGURE, layout.ACCURACY_FIGURE, layout.LR_SWEEP_FIGURE}
    found = literals_outside("catsdogs/study/layout.py", names, RUN_FOLDER_FILES)
    assert not found, "study-folder file names outside catsdogs/study/layout.py:\n" + "\n".join(found)

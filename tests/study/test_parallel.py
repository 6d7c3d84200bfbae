"""compare --jobs: runs in processes of their own give the same results as one after another, at equal threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catsdogs.errors import UsageError
from catsdogs.study.compare import run_study
from catsdogs.study.executors import Slot, plan_slots
from tests.helpers import run_results, summary_without_time, tiny_spec


def test_jobs_give_the_same_runs_as_one_after_another(study_split: Path, straight_study: Path,
                                                      tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "study"
    assert run_study(tiny_spec(study_split, out, jobs=2, threads_per_run=1), progress=False,
                     log=lines.append).status == "complete"
    assert run_results(straight_study) == run_results(out)
    assert summary_without_time(straight_study) == summary_without_time(out)
    for run in (out / "runs").iterdir():
        status = json.loads((run / "status.json").read_text(encoding="utf-8"))
        assert (status["threads"], status["device"]) == (1, "cpu") and status["node"]
    straight_status = (straight_study / "runs" / "adam-seed42" / "status.json").read_text(encoding="utf-8")
    assert json.loads(straight_status)["threads"] == 1
    assert sum("[2/2]" in line for line in lines) == 1
    # A run whose end was lost (no status, no best.pt) runs again with the same command; the finished one is kept.
    run = out / "runs" / "adam-seed42"
    for name in ("status.json", "metrics.json", "best.pt", "predictions.csv"):
        (run / name).unlink()
    again: list[str] = []
    assert run_study(tiny_spec(study_split, out, jobs=2, threads_per_run=1), progress=False,
                     log=again.append).status == "complete"
    assert sum("[done earlier]" in line for line in again) == 1
    assert any("adam seed 42" in line and "[done earlier]" not in line for line in again), again
    assert run_results(straight_study) == run_results(out)


def test_slots_share_the_cpus_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2, 3, 4}, raising=False)
    monkeypatch.setattr("catsdogs.study.executors.usable_cpus", lambda: 5)
    monkeypatch.setattr("catsdogs.study.executors._visible_gpus", lambda: [])
    assert plan_slots(2, None, "auto") == [Slot(2, (0, 1)), Slot(2, (2, 3))]
    assert plan_slots(3, 2, "cpu") == [Slot(2)] * 3  # 6 threads on 5 CPUs: no pinning
    monkeypatch.setattr("catsdogs.study.executors._visible_gpus", lambda: ["0", "3"])
    assert plan_slots(2, None, "auto") == [Slot(2, gpu="0"), Slot(2, gpu="3")]
    with pytest.raises(UsageError, match="--jobs 3 asks for more runs at once than the 2 GPU"):
        plan_slots(3, None, "cuda")

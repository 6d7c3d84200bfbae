"""Growing a study: more epochs continue its runs, and equal a study trained that long from the start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from catsdogs.errors import UsageError
from catsdogs.study.compare import StudySpec, run_study
from catsdogs.training.config import TrainConfig
from tests.helpers import history_without_time, split_fixture, spy_on_study_training

SIZE = 96
OPTIMS = ("minibatch-sgd", "adam")

data = split_fixture((12, 4, 4), size=SIZE, scope="module")


def spec(data: Path, out: Path, epochs: int, **config) -> StudySpec:
    base = TrainConfig(data=str(data), image_size=SIZE, epochs=epochs, device="cpu", precision="fp32", **config)
    return StudySpec(base, OPTIMS, seeds=2, out=out)


def results(out: Path) -> dict[str, tuple]:
    """Each run's history (times aside), status and test accuracy."""
    found = {}
    for run in sorted((out / "runs").iterdir()):
        status = json.loads((run / "status.json").read_text())
        found[run.name] = (history_without_time(run), status["status"], status["epochs_done"], status["epochs"],
                           json.loads((run / "metrics.json").read_text())["accuracy"],
                           yaml.safe_load((run / "config.yaml").read_text())["epochs"])
    return found


def test_more_epochs_continue_every_run_and_equal_a_straight_study(data: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    straight = tmp_path / "straight"
    assert run_study(spec(data, straight, 3), progress=False, log=lambda _: None).status == "complete"
    grown = tmp_path / "grown"
    assert run_study(spec(data, grown, 2), progress=False, log=lambda _: None).status == "complete"
    calls = spy_on_study_training(monkeypatch)
    lines: list[str] = []
    result = run_study(spec(data, grown, 3), progress=False, log=lines.append)
    assert result.status == "complete"
    assert lines[0] == (f"extending the study in {grown} from 2 to 3 epochs (runs that reached 2 continue from "
                        "their last.pt; runs that stopped early stay stopped)")
    assert all(new is None for new, _ in calls)  # every run resumed, none trained anew
    assert sorted(str(resume) for _, resume in calls) == sorted(str(run) for run in (grown / "runs").iterdir())
    assert results(grown) == results(straight)
    assert json.loads((grown / "study.json").read_text())["config"]["epochs"] == 3
    assert all(len(row["epochs_done"]) == 2 and set(row["epochs_done"]) == {3}
               for row in result.summary.to_dict()["ranking"])
    calls.clear()
    again: list[str] = []
    assert run_study(spec(data, grown, 3), progress=False, log=again.append).status == "complete"
    assert calls == [] and again[0] == f"continuing the study in {grown}"


def test_more_epochs_are_refused_where_the_schedule_spans_them(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    run_study(StudySpec(spec(data, out, 1, scheduler="cosine").base, ("adam",), seeds=1, out=out), progress=False,
              log=lambda _: None)
    before = results(out)
    with pytest.raises(UsageError, match="epochs = 1, but this command asks for epochs = 2 \\(more epochs cannot "
                                         "continue its runs: its cosine schedule span them\\)"):
        run_study(StudySpec(spec(data, out, 2, scheduler="cosine").base, ("adam",), seeds=1, out=out),
                  progress=False, log=lambda _: None)
    assert results(out) == before
    shutil.rmtree(out)

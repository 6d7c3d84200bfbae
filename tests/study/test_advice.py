"""The report's advice: runs still improving at the epoch cap are told how to get more epochs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from catsdogs.study.advice import next_steps
from catsdogs.study.layout import Summary

# The optimizer study in the docs: 5 seeds, 50 epochs at most, every run stopped early.
STUDY = json.loads((Path(__file__).resolve().parents[2] / "docs" / "studies" / "petimages-large" / "summary.json")
                   .read_text(encoding="utf-8"))


def capped_at_30(scheduler: str = "constant") -> Summary:
    """The same study as if cut at 30 epochs: momentum's runs reached the cap, four of them near their best."""
    values = copy.deepcopy(STUDY)
    values["shared_settings"].update(epochs=30, scheduler=scheduler)
    best = {42: 27, 43: 30, 44: 26, 45: 29, 46: 20}
    for run in values["runs"]:
        if run["optim"] == "momentum":
            run.update(status="finished", epochs=30, best_epoch=best[run["seed"]])
    return Summary.from_dict(values)


def test_a_study_whose_runs_levelled_off_is_not_told_to_train_longer() -> None:
    assert all(run["status"] == "early-stopped" for run in STUDY["runs"])
    assert not [step for step in next_steps(Summary.from_dict(STUDY)) if "Still improving" in step]


@pytest.mark.parametrize("scheduler, how", [
    ("constant", "`--epochs 60` grows this study: the runs that reached the cap continue from their last.pt."),
    ("cosine", "`--epochs 60` needs a new study (`--out`): its schedule spans the epochs, so runs cannot continue.")])
def test_runs_still_improving_at_the_cap_are_named_with_the_way_to_train_longer(scheduler: str, how: str) -> None:
    steps = [step for step in next_steps(capped_at_30(scheduler)) if "Still improving" in step]
    assert steps == ["Still improving at the 30-epoch cap (best epoch in its last fifth): momentum (4 of 5 runs). "
                     + how]


def test_ties_the_report_can_size_get_the_seeds_that_would_settle_them() -> None:
    steps = [step for step in next_steps(Summary.from_dict(STUDY)) if "--seeds" in step]
    assert steps == ["`--seeds 7` extends this study (its finished runs are kept) to the seeds that would tell "
                     "vanilla-sgd vs momentum and momentum vs minibatch-sgd apart at the gap and spread seen "
                     "(adam vs vanilla-sgd would need 30)."]


def test_no_seeds_are_advised_once_every_gap_is_told_apart() -> None:
    values = copy.deepcopy(STUDY)
    for comparison in values["adjacent"]:
        comparison.update(distinguishable=True, seeds_needed=None)
    assert not [step for step in next_steps(Summary.from_dict(values)) if "--seeds" in step]

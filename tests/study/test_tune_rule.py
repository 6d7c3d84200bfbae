"""`compare --tune-lr --tune-rule stable`: the best of the rates that leave a step of margin below a rate where
some tuning seed failed, and the rule at work on the studies published in docs/studies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from catsdogs.cli import main
from catsdogs.study import study_run as study_run_module
from catsdogs.study.compare import StudySpec, run_study
from catsdogs.study.layout import TuningRecord
from catsdogs.study.lr_sweep import choose_rate
from catsdogs.study.tuning import grid_lr
from catsdogs.training.optim import get_optimizer_spec
from tests.helpers import quiet, small_study, split_fixture, stand_in_sweep_training

SIZE = 96
ADAM = get_optimizer_spec("adam").defaults["lr"]
ROOT = Path(__file__).resolve().parents[2]

data = split_fixture((12, 4, 4), size=SIZE, scope="module")


def spec(data: Path, out: Path, **overrides) -> StudySpec:
    return small_study(data, out, SIZE, **{"tune_lr": True, **overrides})




def best_beside_a_failing_rate(failing_seed: int):
    """Adam's best mean at its default, but half a decade up it fails on `failing_seed` (55%, below halfway
    from chance to the best run) and trains on the other seeds; every rate below trains a little worse."""
    def accuracy(optim: str, step: float, seed: int) -> float:
        step = round(step)
        if step == 1:
            return 0.55 if seed == failing_seed else 0.85
        return 0.50 if step > 1 else 0.90 - 0.02 * abs(step)
    return accuracy


def test_stable_chooses_a_step_below_a_rate_that_failed_on_its_one_tuning_seed(data: Path, tmp_path: Path,
                                                                                monkeypatch) -> None:
    trained: list[str] = []
    monkeypatch.setattr(study_run_module, "train", stand_in_sweep_training(best_beside_a_failing_rate(42), trained))
    out = tmp_path / "study"
    lines: list[str] = []
    result = run_study(spec(data, out, tune_rule="stable"), progress=False, log=lines.append)
    assert result.status == "complete"
    assert (f"learning rates chosen on validation accuracy with a step of margin (--tune-rule stable): adam "
            f"{grid_lr(ADAM, -1):g}") in lines
    below = grid_lr(ADAM, -1)
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["rule"] == "stable" and tuning["chance"] == 0.5 and tuning["floors"] == {"adam": pytest.approx(0.7)}
    assert tuning["chosen"] == {"adam": below} and tuning["optims"]["adam"]["best_mean_lr"] == grid_lr(ADAM, 0)
    rows = {row["step"]: row for row in tuning["rows"]}
    assert [step for step, row in sorted(rows.items()) if row["stable"]] == [-4, -3, -2, -1]
    assert rows[0]["best_mean"] and not rows[0]["chosen"] and rows[-1]["chosen"] and not rows[-1]["best_mean"]
    assert "the rates where every tuning seed trained at that rate and the next one up" in tuning["selected_by"]
    assert yaml.safe_load((out / "runs" / "adam-seed42" / "config.yaml").read_text())["lr"] == below
    report = (out / "report.md").read_text()
    assert "by `--tune-rule stable`, the best of the rates that leave a step of margin" in report
    assert "halfway from chance (50.0%)" in report
    assert f"| adam | 9 | 0.01 to 100 | {below:g} | 0.316 | 0.001 | 70.0% |" in report
    assert "| adam | 0.001 | 1 | 90.0% | " in report and "| best mean, no margin |" in report
    assert "; a boxed point is a best mean passed over for a step of margin." in report
    assert (f"| adam | {below:g} | — | 100 | — | sweep (best validation accuracy with a step of margin, "
            "`--tune-rule stable`) |") in report
    assert json.loads((out / "study.json").read_text())["tune_rule"] == "stable"


def test_changing_the_rule_chooses_again_from_the_same_tuning_runs(data: Path, tmp_path: Path, monkeypatch) -> None:
    trained: list[str] = []
    monkeypatch.setattr(study_run_module, "train", stand_in_sweep_training(best_beside_a_failing_rate(42), trained))
    out = tmp_path / "study"
    result = run_study(spec(data, out), progress=False, log=quiet)
    assert result.summary.sweep.chosen == {"adam": grid_lr(ADAM, 0)} and result.summary.sweep.rule == "best"
    # A study made before --tune-rule existed chose the best mean: the same command continues it.
    study = json.loads((out / "study.json").read_text())
    del study["tune_rule"]
    (out / "study.json").write_text(json.dumps(study))
    lines: list[str] = []
    assert run_study(spec(data, out), progress=False, log=lines.append).status == "complete"
    assert lines[0] == f"continuing the study in {out}"

    trained.clear()
    lines.clear()
    result = run_study(spec(data, out, tune_rule="stable"), progress=False, log=lines.append)
    assert lines[0] == (f"extending the study in {out} to choose its learning rates by --tune-rule stable, not best "
                        "(tuning runs are kept; a study run whose learning rate changes trains again)")
    assert trained == []  # no tuning run trained again
    assert result.summary.sweep.chosen == {"adam": grid_lr(ADAM, -1)}
    assert sum("holds a run with another lr; training it again" in line for line in lines) == 1
    assert yaml.safe_load((out / "runs" / "adam-seed42" / "config.yaml").read_text())["lr"] == grid_lr(ADAM, -1)


def test_two_tuning_seeds_find_the_failure_one_seed_misses_and_mark_it(data: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.setattr(study_run_module, "train", stand_in_sweep_training(best_beside_a_failing_rate(43), []))
    one = run_study(spec(data, tmp_path / "one", tune_rule="stable"), progress=False, log=quiet)
    assert one.summary.sweep.chosen == {"adam": grid_lr(ADAM, 0)}  # seed 42 trains half a decade up
    two = run_study(spec(data, tmp_path / "two", tune_rule="stable", tune_seeds=2), progress=False, log=quiet)
    assert two.summary.sweep.chosen == {"adam": grid_lr(ADAM, -1)}
    report = (tmp_path / "two" / "report.md").read_text()
    assert f"| adam | {grid_lr(ADAM, 1):g} | 3.16 | 70.0% | 85.0%, 55.0% ✗ | " in report
    assert "✗ marks a tuning run that did not train" in report


def test_where_no_rate_leaves_a_margin_the_best_mean_stands_and_the_report_says_so(data: Path, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    # Every rate fails on one of the two seeds, turn about.
    def accuracy(optim: str, step: float, seed: int) -> float:
        return 0.5 if (round(step) + seed) % 2 else 0.9 - 0.02 * abs(round(step))
    monkeypatch.setattr(study_run_module, "train", stand_in_sweep_training(accuracy, []))
    out = tmp_path / "study"
    result = run_study(spec(data, out, tune_rule="stable", tune_seeds=2), progress=False, log=quiet)
    assert result.summary.sweep.chosen == {"adam": grid_lr(ADAM, 0)}
    assert all(row.stable is False for row in result.summary.sweep.rows)
    assert "**No rate of adam left a step of margin**" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--tune-rule", "stable"], "Error: --tune-rule sets how the learning-rate sweep chooses: add --tune-lr"),
    (["--tune-lr", "--tune-rule", "safest"], "Invalid value for '--tune-rule': 'safest' is not one of 'best', "
                                             "'stable'."),
])
def test_a_wrong_tune_rule_is_refused_in_one_line(data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["compare", "--data", str(data), "--image-size", str(SIZE), "--epochs", "1",
                                       *args, "--out", str(tmp_path / "study")])
    assert result.exit_code != 0 and not (tmp_path / "study").exists()
    assert message in result.output and "Traceback" not in result.output


def published(study: str) -> TuningRecord:
    return TuningRecord.from_dict(json.loads((ROOT / "docs" / "studies" / study / "tuning.json").read_text()))


def stable_choice(record: TuningRecord, chance: float) -> dict[str, float]:
    """Each optimizer's rate by the rule stable, from a tuning.json's rows (a record older than --tune-seeds has
    no per-seed scores: its one seed's score is the row's)."""
    rows = [dataclasses.replace(row, seed_scores=row.seed_scores or [row.best_val_acc]) for row in record.rows]
    return {optim: choose_rate([row for row in rows if row.optim == optim], "val_acc", chance)[1].lr
            for optim in record.optims}


@pytest.mark.parametrize("study", ["petimages-large", "petimages-large-tune3"])
def test_on_the_published_sweeps_the_rule_lands_on_rates_that_trained_on_every_seed(study: str) -> None:
    """docs/optimizer-study.md: on the study's sweeps, with one tuning seed or three, the rule stable chooses the
    rates half a decade below the best mean for the three batch-100 optimizers, which trained on all 7 seeds."""
    assert stable_choice(published(study), chance=0.5) == {"vanilla-sgd": 0.00316, "minibatch-sgd": 0.1,
                                                           "momentum": 0.01, "adam": 0.000316}

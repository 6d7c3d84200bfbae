"""`compare --lrs OPTIM=LR,...`: a study at learning rates the user gives, the others at their defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from catsdogs.cli import main
from catsdogs.errors import UsageError
from catsdogs.study.compare import StudySpec, parse_lrs, run_study
from catsdogs.training.optim import get_optimizer_spec
from tests.helpers import quiet, small_study, split_fixture

SIZE = 96

data = split_fixture((12, 4, 4), size=SIZE, scope="module")


def spec(data: Path, out: Path, **overrides) -> StudySpec:
    return small_study(data, out, SIZE, **{"optims": ("minibatch-sgd", "adam"), **overrides})




def test_a_study_trains_at_the_given_rates_and_says_where_each_came_from(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = run_study(spec(data, out, lrs={"adam": 0.0005}), progress=False, log=quiet)
    assert result.status == "complete"
    configs = {optim: yaml.safe_load((out / "runs" / f"{optim}-seed42" / "config.yaml").read_text())
               for optim in ("minibatch-sgd", "adam")}
    assert configs["adam"]["lr"] == 0.0005
    assert configs["minibatch-sgd"]["lr"] == get_optimizer_spec("minibatch-sgd").defaults["lr"]
    assert json.loads((out / "study.json").read_text())["lrs"] == {"adam": 0.0005}
    report = (out / "report.md").read_text()
    assert "| adam | 0.0005 | — | 100 | — | given (`--lrs`) |" in report
    assert "| minibatch-sgd | 0.01 | 0 | 100 | — | optimizer default |" in report
    assert "- minibatch-sgd kept its default learning rate: `--tune-lr` compares each" in report
    with pytest.raises(UsageError, match=r"lrs = \{'adam': 0.0005\}, but this command asks for lrs = \{'adam': 0.001\}"):
        run_study(spec(data, out, lrs={"adam": 0.001}), progress=False, log=quiet)


def test_bad_rates_are_refused_in_one_line(data: Path, tmp_path: Path) -> None:
    assert parse_lrs(None) == {} and parse_lrs("adam=3e-4, momentum = 0.01") == {"adam": 0.0003, "momentum": 0.01}
    for bad in ("adam", "adam=", "adam=-1", "adam=fast", "=0.1", "adam=inf"):
        with pytest.raises(UsageError, match="give OPTIM=LR pairs with LR > 0"):
            parse_lrs(bad)
    with pytest.raises(UsageError, match="names adam more than once"):
        parse_lrs("adam=0.1,adam=0.2")
    cases = {("--lrs", "adam=0.001", "--tune-lr"): "--lrs gives the learning rates and --tune-lr chooses them",
             ("--lrs", "momentum=0.01", "--optims", "adam"): "--lrs names momentum, which the study does not compare"}
    for args, message in cases.items():
        result = CliRunner().invoke(main, ["compare", "--data", str(data), "--image-size", str(SIZE), "--epochs", "1",
                                           "--out", str(tmp_path / "study"), *args])
        assert result.exit_code != 0 and not (tmp_path / "study").exists()
        (line,) = result.output.strip().splitlines()
        assert message in line

"""Optimizer studies: the runs, pairing, resuming, the report and its statistics, an LR sweep blind to test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from catsdogs.cli import main
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference import evaluate as evaluate_module
from catsdogs.study import compare as compare_module
from catsdogs.study import report as report_module
from catsdogs.study import study_run as study_run_module
from catsdogs.study.compare import StudySpec, parse_budget, parse_optims, run_study
from catsdogs.study.lr_sweep import LrSweep
from catsdogs.study.tuning import INITIAL_STEPS, LIMIT_STEPS, grid_lr
from catsdogs.training.loop import Hooks
from catsdogs.training import run_setup
from catsdogs.training.config import TrainConfig
from catsdogs.training.optim import get_optimizer_spec
from tests.helpers import write_tiny_split
from tests.helpers import history_without_time, split_fixture, spy_on_study_training, stand_in_sweep_training

SIZE = 96  # cnn3's minimum, to keep the tests fast
OPTIMS = ("minibatch-sgd", "adam")
SEEDS = (42, 43)


def quiet(_: str) -> None:
    pass


def base_config(data: Path, **overrides) -> TrainConfig:
    values = dict(data=str(data), image_size=SIZE, epochs=1, device="cpu", precision="fp32")
    return TrainConfig(**{**values, **overrides})


data = split_fixture((12, 4, 4), size=SIZE, scope="module")


@pytest.fixture(scope="module")
def study(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished two-optimizer, two-seed, one-epoch study, and the lines it logged; tests leave it complete."""
    out = tmp_path_factory.mktemp("study") / "study"
    lines: list[str] = []
    result = run_study(StudySpec(base_config(data), OPTIMS, seeds=2, out=out), progress=False, log=lines.append)
    assert result.status == "complete"
    return out, lines


def spec_for(data: Path, out: Path, **overrides) -> StudySpec:
    return StudySpec(base_config(data, **overrides.pop("config", {})), **{"optims": OPTIMS, "seeds": 2, "out": out,
                                                                           **overrides})


# ---- a tiny study ----------------------------------------------------------------------------

def test_study_writes_runs_report_summary_and_figures(study: tuple[Path, list[str]]) -> None:
    out, lines = study
    for optim in OPTIMS:
        for seed in SEEDS:
            run = out / "runs" / f"{optim}-seed{seed}"
            for name in ("config.yaml", "history.csv", "best.pt", "status.json", "metrics.json", "train.log"):
                assert (run / name).is_file(), run / name
            assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
    for figure in ("curves.png", "test_accuracy.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([line for line in lines if line.startswith("[")]) == 4
    assert any(line.startswith("[4/4] adam seed 43: test acc ") for line in lines)

    summary = json.loads((out / "summary.json").read_text())
    accuracies = {(o, s): json.loads((out / "runs" / f"{o}-seed{s}" / "metrics.json").read_text())["accuracy"]
                  for o in OPTIMS for s in SEEDS}
    ranking = summary["ranking"]
    assert [row["rank"] for row in ranking] == [1, 2]
    assert ranking[0]["test_acc"]["mean"] >= ranking[1]["test_acc"]["mean"]
    for row in ranking:
        values = [accuracies[(row["optim"], s)] for s in SEEDS]
        assert row["test_acc"]["values"] == values
        assert row["test_acc"]["sd"] == pytest.approx(statistics.stdev(values))
        assert row["epochs_done"] == [1, 1] and row["wall_seconds"]["mean"] > 0
        assert row["images_per_second"]["mean"] > 0
    pair = summary["adjacent"][0]
    assert (pair["better"], pair["worse"]) == (ranking[0]["optim"], ranking[1]["optim"])
    assert pair["test"]["n"] == 2 and 0.0 <= pair["test"]["p"] <= 1.0
    adam, minibatch = get_optimizer_spec("adam"), get_optimizer_spec("minibatch-sgd")
    assert summary["hyperparameters"]["adam"]["lr"] == adam.defaults["lr"]
    assert summary["hyperparameters"]["minibatch-sgd"] == {
        "lr": minibatch.defaults["lr"], "momentum": minibatch.defaults["momentum"], "batch_size": minibatch.batch_size,
        "weight_decay": None, "lr_from": "optimizer default"}
    assert summary["data"] == {"path": summary["shared_settings"]["data"], "train_images": 24, "val_images": 8,
                               "test_images": 8}

    report = (out / "report.md").read_text()
    assert "](curves.png)" in report and "](test_accuracy.png)" in report
    assert "| rank | optimizer | test accuracy (mean ± sd)" in report
    assert f"| 1 | {ranking[0]['optim']} |" in report and f"| 2 | {ranking[1]['optim']} |" in report
    assert "weak evidence" in report and "1 degree of freedom" in report
    assert "**Next steps:**" in report and "`--tune-lr` compares each at its best" in report
    assert "equal epochs (`--budget epochs`): every run trains 1 epoch" in report
    assert "| image_size | 96 |" in report and "| precision | fp32 |" in report


def test_every_optimizer_of_a_seed_starts_from_the_same_weights(study: tuple[Path, list[str]]) -> None:
    out, _ = study
    hashes = {(o, s): json.loads((out / "runs" / f"{o}-seed{s}" / "status.json").read_text())["init_hash"]
              for o in OPTIMS for s in SEEDS}
    for seed in SEEDS:
        assert hashes[("adam", seed)] == hashes[("minibatch-sgd", seed)]
    assert hashes[("adam", 42)] != hashes[("adam", 43)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairing"]["paired"] is True
    assert "started from the same initial weights" in (out / "report.md").read_text()


def test_rerunning_the_study_trains_and_evaluates_nothing(study: tuple[Path, list[str]], data: Path,
                                                          monkeypatch) -> None:
    out, _ = study

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(study_run_module, "train", forbidden)
    monkeypatch.setattr(study_run_module, "evaluate_run", forbidden)
    lines: list[str] = []
    result = run_study(spec_for(data, out), progress=False, log=lines.append)
    assert result.status == "complete"
    assert lines[0] == f"continuing the study in {out}"
    assert sum(line.endswith("[done earlier]") for line in lines) == 4
    lines.clear()  # the same optimizers listed in another order: the same study
    assert run_study(spec_for(data, out, optims=OPTIMS[::-1]), progress=False, log=lines.append).status == "complete"
    assert lines[0] == f"continuing the study in {out}"


CHANGES = [({"seeds": 1}, "seeds = 42,43, but this command asks for seeds = 42"),
           ({"config": {"epochs": 2, "scheduler": "cosine"}},
            "epochs = 1, but this command asks for epochs = 2 \\(more epochs cannot continue its runs: its cosine "
            "schedule span them\\)"),
           ({"config": {"image_size": 112}}, "image_size = 96, but this command asks for image_size = 112"),
           ({"optims": ("adam",)}, "optims = minibatch-sgd,adam"),
           ({"budget": "seconds:5"}, "budget = epochs")]


@pytest.mark.parametrize("change, named", CHANGES)
def test_changed_arguments_are_refused_without_force(study: tuple[Path, list[str]], data: Path, change: dict,
                                                     named: str) -> None:
    out, _ = study
    with pytest.raises(UsageError, match=f"{named}.*add --force to delete it"):
        run_study(spec_for(data, out, **change), progress=False, log=quiet)
    assert (out / "report.md").is_file() and len(list((out / "runs").iterdir())) == 4


def test_more_seeds_extend_a_study_and_keep_its_runs(study: tuple[Path, list[str]], data: Path,
                                                      tmp_path: Path) -> None:
    out = Path(shutil.copytree(study[0], tmp_path / "study"))
    lines: list[str] = []
    result = run_study(spec_for(data, out, seeds=3), progress=False, log=lines.append)
    assert result.status == "complete"
    assert lines[0] == f"extending the study in {out} from 2 to 3 seeds (adding 44; finished runs are kept)"
    assert sum(line.endswith("[done earlier]") for line in lines) == 4
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{o}-seed{s}" for o in OPTIMS
                                                                       for s in (42, 43, 44))
    assert json.loads((out / "study.json").read_text())["seeds"] == [42, 43, 44]
    assert [len(row["test_acc"]["values"]) for row in result.summary.to_dict()["ranking"]] == [3, 3]
    with pytest.raises(UsageError, match="image_size = 96, but this command asks for image_size = 112"):  # not seeds
        run_study(spec_for(data, out, seeds=4, config={"image_size": 112}), progress=False, log=quiet)


def test_force_deletes_the_old_study_and_starts_again(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    run_study(spec_for(data, out, optims=("adam",), seeds=1), progress=False, log=quiet)
    (out / "runs" / "adam-seed42" / "stale.txt").write_text("from the old study")
    lines: list[str] = []
    result = run_study(spec_for(data, out, optims=("adam",), seeds=1, config={"epochs": 2}), force=True,
                       progress=False, log=lines.append)
    assert result.status == "complete" and lines[0] == f"--force: deleting the study in {out} and starting again"
    assert not (out / "runs" / "adam-seed42" / "stale.txt").exists()
    assert json.loads((out / "study.json").read_text())["config"]["epochs"] == 2
    assert result.summary.to_dict()["ranking"][0]["epochs_done"] == [2]


def test_runs_made_before_a_setting_was_added_are_kept(study: tuple[Path, list[str]], data: Path,
                                                       tmp_path: Path) -> None:
    # A study made with an older catsdogs: its runs' config.yaml lack the settings added since, which count as
    # their defaults (as a resume reads them), so nothing is trained again.
    out = Path(shutil.copytree(study[0], tmp_path / "study"))
    for config in out.glob("runs/*/config.yaml"):
        values = yaml.safe_load(config.read_text())
        assert values.pop("whiten_stem") is False and values.pop("bn_bias_lr_scale") == 1.0
        config.write_text(yaml.safe_dump(values))
    lines: list[str] = []
    assert run_study(spec_for(data, out), progress=False, log=lines.append).status == "complete"
    assert sum(line.endswith("[done earlier]") for line in lines) == 4
    assert not any("training it again" in line for line in lines)


def test_a_deleted_run_is_redone_identically_and_the_rest_kept(study: tuple[Path, list[str]], data: Path,
                                                               tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "moved-study"
    shutil.copytree(study[0], copy)  # a moved study still continues: run folders are matched by settings
    victim = copy / "runs" / "adam-seed43"
    before = (history_without_time(victim), json.loads((victim / "metrics.json").read_text())["accuracy"])
    shutil.rmtree(victim)
    calls = spy_on_study_training(monkeypatch)
    lines: list[str] = []
    assert run_study(spec_for(data, copy), progress=False, log=lines.append).status == "complete"
    assert calls == [(str(victim), None)]
    assert sum(line.endswith("[done earlier]") for line in lines) == 3
    after = (history_without_time(victim), json.loads((victim / "metrics.json").read_text())["accuracy"])
    assert after == before


def test_an_interrupted_study_resumes_only_the_run_in_progress(data: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "study"
    spec = StudySpec(base_config(data), ("minibatch-sgd", "vanilla-sgd"), seeds=1, out=out)
    steps = {"n": 0}
    real_train = study_run_module.train

    def step(progress):
        steps["n"] += 1
        if steps["n"] == 1 + 5:  # minibatch-sgd takes 1 step (24 images, batch 100); vanilla-sgd is at step 5
            os.kill(os.getpid(), signal.SIGINT)

    def counting(cfg, resume=None, **kwargs):
        return real_train(cfg, resume=resume, hooks=Hooks(after_step=[step]), **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(study_run_module, "train", counting)
        lines: list[str] = []
        assert run_study(spec, progress=False, log=lines.append).status == "interrupted"
    assert any("study interrupted in vanilla-sgd seed 42; run the same command again" in line for line in lines)
    assert not (out / "report.md").exists()
    assert json.loads((out / "runs" / "vanilla-sgd-seed42" / "status.json").read_text())["status"] == "interrupted"

    calls = spy_on_study_training(monkeypatch)
    lines = []
    assert run_study(spec, progress=False, log=lines.append).status == "complete"
    assert [resume for _, resume in calls] == [out / "runs" / "vanilla-sgd-seed42"]
    assert lines[1].endswith("[done earlier]") and lines[2].endswith("[resumed]")
    assert "epoch 1/1" in (out / "runs" / "vanilla-sgd-seed42" / "train.log").read_text()


@pytest.mark.parametrize(("class_weights", "chosen"), [("balanced", 0.01), ("none", 0.001)])
def test_the_sweep_picks_the_learning_rate_by_train_s_own_best_epoch_rule(tmp_path: Path, class_weights: str,
                                                                         chosen: float) -> None:
    histories = {0.001: [(0.50, 0.857, 0.500), (0.70, 0.700, 0.720)],  # best plain accuracy, in epoch 1
                 0.01: [(0.60, 0.800, 0.750), (0.65, 0.790, 0.740)]}  # best balanced accuracy, in epoch 1
    runs = []
    for factor, (lr, scores) in zip((1.0, 10.0), histories.items()):
        run = tmp_path / f"adam-lr{lr:g}"
        run.mkdir()
        rows = [f"{e},0.6,0.7,{loss},{acc},{balanced},{lr},1.0" for e, (loss, acc, balanced) in enumerate(scores, 1)]
        (run / "history.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,val_balanced_acc,lr,seconds\n"
                                         + "\n".join(rows) + "\n")
        runs.append(study_run_module.Planned("sweep", base_config(tmp_path, optim="adam", lr=lr, out=str(run)), factor))
    sweep = LrSweep(base_config(tmp_path, class_weights=class_weights), ("adam",), tmp_path, None, seeds=(42,))
    tuning = sweep.choose(runs).to_dict()
    assert tuning["chosen"] == {"adam": chosen}
    by_lr = {row["lr"]: row for row in tuning["rows"]}
    if class_weights == "balanced":  # each run's best epoch by balanced accuracy: epoch 2, then epoch 1
        assert [(by_lr[lr]["best_epoch"], by_lr[lr]["best_val_balanced_acc"]) for lr in histories] == [(2, 0.72),
                                                                                                       (1, 0.75)]
    else:
        assert [(by_lr[lr]["best_epoch"], by_lr[lr]["best_val_acc"]) for lr in histories] == [(1, 0.857), (1, 0.8)]


def test_tuning_the_learning_rate_never_reads_the_test_split(tmp_path: Path, monkeypatch) -> None:
    data = write_tiny_split(tmp_path, per_class=(12, 4, 4), size=SIZE)
    out = tmp_path / "study"
    originals = {path: path.read_bytes() for path in (data / "test").rglob("*.jpg")}
    for path in originals:
        path.write_bytes(b"not an image at all")
    test_reads: list[bool] = []  # for each read of the test split: had the sweep already ended?
    for module in (run_setup, evaluate_module, compare_module, report_module):
        real = module.read_split

        def spy(data_dir, split, classes=None, real=real):
            if split == "test":
                test_reads.append((out / "tuning.json").is_file())
            return real(data_dir, split, classes)

        monkeypatch.setattr(module, "read_split", spy)
    spec = spec_for(data, out, seeds=1, tune_lr=True, optims=("adam",))  # one optimizer: its sweep is 9+ runs
    with pytest.raises(CatsdogsError, match="no readable images"):
        run_study(spec, progress=False, log=quiet)  # the sweep and the first run train; its test evaluation fails
    assert test_reads and all(test_reads)
    tuning = json.loads((out / "tuning.json").read_text())
    default_lr = get_optimizer_spec("adam").defaults["lr"]  # the sweep: the default times 10^-2 ... 10^2
    tried = [row["lr"] for row in tuning["rows"]]
    assert tried[:9] == [grid_lr(default_lr, step) for step in INITIAL_STEPS] or tried[-9:] == [
        grid_lr(default_lr, step) for step in INITIAL_STEPS]  # and more on one side when the best lay on an edge
    best = max(row["best_val_acc"] for row in tuning["rows"])
    chosen = [row for row in tuning["rows"] if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["best_val_acc"] == best and chosen[0]["lr"] == tuning["chosen"]["adam"]
    assert len(list((out / "sweep").iterdir())) == len(tuning["rows"]) == sum(
        effort["runs"] for effort in tuning["optims"].values()) >= 9

    for path, content in originals.items():
        path.write_bytes(content)
    assert run_study(spec, progress=False, log=quiet).status == "complete"
    config = yaml.safe_load((out / "runs" / "adam-seed42" / "config.yaml").read_text())
    assert config["lr"] == tuning["chosen"]["adam"]
    report = (out / "report.md").read_text()
    assert "## Learning-rate sweep" in report and "The test split was not read" in report
    assert "sweep (best validation accuracy)" in report
    assert json.loads((out / "study.json").read_text())["tune_lr"] is True
    assert "tune the learning rate (`--tune-lr`)" not in report and "`--tune-lr` compares each" not in report


def peaks_at(peaks: dict[str, float]):
    """Validation accuracy that peaks at `peaks[optim]` half-decades from the optimizer's default."""
    return lambda optim, step, seed: 0.9 - 0.02 * abs(step - peaks[optim])


def test_the_sweep_widens_an_edge_up_to_its_limit_and_a_rerun_resumes_it(data: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    # adam's best lies 10^-2.5 from its default (one step past the grid); minibatch-sgd's far past the limit.
    adam, minibatch = get_optimizer_spec("adam").defaults["lr"], get_optimizer_spec("minibatch-sgd").defaults["lr"]
    out, trained = tmp_path / "study", []
    interrupted = f"adam-lr{grid_lr(adam, -6):g}"  # the run of adam's second widening round
    stand_in = stand_in_sweep_training(peaks_at({"adam": -5, "minibatch-sgd": -30}), trained, {interrupted})
    monkeypatch.setattr(study_run_module, "train", stand_in)
    spec = spec_for(data, out, seeds=1, tune_lr=True)
    assert run_study(spec, progress=False, log=quiet).status == "interrupted"
    assert not (out / "tuning.json").exists() and trained[-1] == interrupted
    before = len(trained)
    lines: list[str] = []
    result = run_study(spec, progress=False, log=lines.append)
    assert result.status == "complete"
    assert trained[before] == interrupted and len(set(trained)) == len(trained) - 1  # only it ran twice
    assert sum(line.endswith("[done earlier]") for line in lines) == before - 1

    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["chosen"] == {"minibatch-sgd": grid_lr(minibatch, -LIMIT_STEPS), "adam": grid_lr(adam, -5)}
    assert tuning["optims"]["adam"] | {"factor": 0} == {
        "runs": 11, "lr": grid_lr(adam, -5), "factor": 0, "lowest_factor": pytest.approx(1e-3),
        "highest_factor": 100.0, "extended": [-6, -5], "at_edge": False, "at_limit": False,
        "best_mean_lr": grid_lr(adam, -5)}
    assert tuning["optims"]["minibatch-sgd"]["runs"] == 13 and tuning["optims"]["minibatch-sgd"]["at_limit"]
    assert tuning["rounds"] == 5 and tuning["grid"]["limit_factors"] == pytest.approx([1e-4, 1e4])
    assert len(tuning["rows"]) == 24 and all(row["best_val_acc"] > 0 for row in tuning["rows"])
    for optim in OPTIMS:
        config = yaml.safe_load((out / "runs" / f"{optim}-seed42" / "config.yaml").read_text())
        assert config["lr"] == tuning["chosen"][optim]

    assert result.summary.to_dict()["sweep"] == tuning and result.summary.to_dict()["figures"]["lr_sweep"] == "lr_sweep.png"
    assert (out / "lr_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| adam | 11 | 0.001 to 100 | " in report and "| minibatch-sgd | 13 | 0.0001 to 100 | " in report
    assert "up to the limit of 0.0001 to 10000 times the default (4 decades each side)" in report
    assert "**The best rate of minibatch-sgd is still on the limit of the grid**" in report
    assert "](lr_sweep.png)" in report and "the sweep took 5 rounds" in report
    assert "seed 42, 1 epoch (a quarter of a study run's budget, at least one epoch)" in report
    assert report.count("data:image/png") == 0 and (out / "report.html").read_text().count("data:image/png") == 3


def test_a_seconds_budget_gives_every_run_the_same_time(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = run_study(spec_for(data, out, seeds=1, budget="seconds:1.5"), progress=False, log=quiet)
    for optim in OPTIMS:
        run = out / "runs" / f"{optim}-seed42"
        assert json.loads((run / "status.json").read_text())["status"] == "time-budget"
        assert yaml.safe_load((run / "config.yaml").read_text())["time_budget"] == pytest.approx(1.5 / 60)
    assert all(row["wall_seconds"]["mean"] >= 1.5 for row in result.summary.to_dict()["ranking"])
    assert "equal wall time (`--budget seconds:1.5`)" in (out / "report.md").read_text()


# ---- refusing bad input ----------------------------------------------------------------------

def test_bad_arguments_are_refused_with_one_line(data: Path, tmp_path: Path) -> None:
    assert parse_optims("adam, momentum") == ("adam", "momentum")
    assert parse_optims(None) == ("vanilla-sgd", "minibatch-sgd", "momentum", "adam")
    with pytest.raises(UsageError, match="unknown optimizer 'nadam'; choose one of: .*adam"):
        parse_optims("adam,nadam")
    with pytest.raises(UsageError, match="names adam more than once"):
        parse_optims("adam,momentum,adam")
    assert parse_budget("epochs") is None and parse_budget("seconds:90") == 90.0
    for bad in ("seconds", "seconds:-1", "minutes:5", "seconds:abc"):
        with pytest.raises(UsageError, match="use epochs, or seconds:S"):
            parse_budget(bad)
    with pytest.raises(UsageError, match="a study sets lr for each run itself"):
        run_study(spec_for(data, tmp_path / "a", config={"lr": 0.1}), progress=False, log=quiet)
    with pytest.raises(UsageError, match="needs --image-size of at least 96"):
        run_study(spec_for(data, tmp_path / "b", config={"image_size": 64}), progress=False, log=quiet)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CatsdogsError, match="is not a catsdogs study"):
        run_study(spec_for(data, tmp_path / "busy"), force=True, progress=False, log=quiet)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_device_this_machine_lacks_is_refused_before_the_study_folder(data: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CatsdogsError, match="--device cuda: no CUDA GPU"):
        run_study(spec_for(data, tmp_path / "gpu", config={"device": "cuda"}), progress=False, log=quiet)
    assert not (tmp_path / "gpu").exists()  # else the same study with --device cpu would ask for --force


def test_a_missing_data_folder_is_named_as_typed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatsdogsError) as info:
        run_study(spec_for(Path("nodir"), Path("study")), progress=False, log=quiet)
    assert str(info.value) == ("data folder nodir does not exist: run `catsdogs split SOURCE --out nodir` first "
                               "(SOURCE: PetImages, or your photos in one subfolder per class), or pass --data DIR")
    result = CliRunner().invoke(main, ["compare", "--data", "nodir", "--optims", "adam", "--device", "cpu"])
    assert result.exit_code == 1 and result.output == f"Error: {info.value}\n"
    shutil.rmtree(write_tiny_split(tmp_path, per_class=(2, 1, 1), size=8) / "test")
    with pytest.raises(CatsdogsError, match="^data has no test/ folder: the study evaluates every run on it$"):
        run_study(spec_for(Path("data"), Path("study")), progress=False, log=quiet)
    assert not (tmp_path / "study").exists()


def test_compare_command_end_to_end(study: tuple[Path, list[str]], data: Path) -> None:
    assert "compare" in main.commands, "the compare command is not wired into cli.py"
    out, _ = study
    args = ["compare", "--data", str(data), "--optims", ",".join(OPTIMS), "--seeds", "2", "--epochs", "1",
            "--image-size", str(SIZE), "--device", "cpu", "--precision", "fp32", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("[done earlier]") == 4 and f"{out}/report.md" in result.output
    refused = CliRunner().invoke(main, [*args[:-2], "--image-size", "112", "--out", str(out)])
    assert refused.exit_code == 2
    assert ("image_size = 96, but this command asks for image_size = 112" in refused.output
            and "Traceback" not in refused.output)


@pytest.mark.parametrize(("class_weights", "shown"), [
    ("none", "best val acc 0.8000 (epoch 3)"),  # epochs 2 and 3 tie on accuracy: the lower loss is best.pt
    ("balanced", "best val balanced acc 0.7250 (acc 0.6900, epoch 3)"),  # chosen by balanced accuracy, then loss
])
def test_each_run_s_line_names_the_epoch_train_kept_as_best_pt(tmp_path: Path, class_weights: str,
                                                               shown: str) -> None:
    scores = {"none": [(0.60, 0.75, 0.75), (0.55, 0.80, 0.79), (0.45, 0.80, 0.78)],
              "balanced": [(0.50, 0.857, 0.500), (0.70, 0.700, 0.725), (0.65, 0.690, 0.725)]}[class_weights]
    run = tmp_path / "adam-seed42"
    run.mkdir()
    rows = [f"{epoch},0.5,0.8,{loss},{acc},{balanced},0.001,1.0\n" for epoch, (loss, acc, balanced) in
            enumerate(scores, 1)]
    (run / "history.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,val_balanced_acc,lr,seconds\n"
                                     + "".join(rows))
    planned = study_run_module.Planned("study", base_config(tmp_path, optim="adam", seed=42, out=str(run),
                                                           class_weights=class_weights))
    assert study_run_module.result_line(planned, "trained", 0.75) == (
        f"adam seed 42: test acc 0.7500, {shown}, final train loss 0.5000, 3 epochs (finished) in 3.0 s")

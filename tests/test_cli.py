"""Tests for catsdogs.cli that need no training: help, listings, --print-config, one-line errors."""

from __future__ import annotations

import copy
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
import yaml
from click.testing import CliRunner, Result

import catsdogs
import catsdogs.training.optim as optim
from catsdogs.cli import main
from catsdogs.training.config import TrainConfig, read_yaml_overrides
from catsdogs.training.optim import ENTRY_POINT_GROUP, get_optimizer_spec, list_optimizers, register_optimizer

COMMANDS = ["download", "split", "train", "evaluate", "predict", "explain", "plot-curves", "compare", "optimizers",
            "models", "schedulers", "augments"]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `catsdogs ARGS...` in a fresh working folder; returns the click Result."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), prog_name="catsdogs")

    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def one_line_error(result: Result, code: int) -> str:
    """Check the command failed with `code`, no traceback and a single `Error:` line; return it."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}"
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    if code == 1:  # a ClickException prints nothing but its one line
        assert result.output.strip() == errors[0]
    return errors[0]


def printed_config(result: Result) -> dict:
    return yaml.safe_load(ok(result))


def test_help_lists_every_command(cli) -> None:
    text = ok(cli("--help"))
    assert text.startswith("Usage: catsdogs [OPTIONS] COMMAND [ARGS]...")
    for command in COMMANDS:
        assert f"  {command} " in text
    assert ok(cli("-h")) == text


@pytest.mark.parametrize(("command", "summary"), [
    ("train", "Train a model on the split's train/ folder"),
    ("evaluate", "Measure a trained run on a split"),
    ("plot-curves", "Plot training and validation loss and accuracy"),
    ("optimizers", "List the registered optimizers"),
    ("split", "Check every image in SOURCE"),
    ("predict", "Classify photos, or every photo in folders"),
    ("explain", "Show which parts of each photo made the model decide"),
])
def test_each_command_has_help_from_its_docstring(cli, command: str, summary: str) -> None:
    text = ok(cli(command, "--help"))
    assert text.startswith(f"Usage: catsdogs {command} ")
    assert summary in text


def test_train_help_documents_the_options(cli) -> None:
    text = ok(cli("train", "--help"))
    for option in ("--optim", "--config", "--epochs", "--batch-size", "--lr", "--image-size", "--device",
                   "--precision", "--print-config", "--resume", "--out"):
        assert option in text


def test_version(cli) -> None:
    assert ok(cli("--version")) == f"catsdogs, version {catsdogs.__version__}\n"


def test_python_dash_m_catsdogs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "catsdogs", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: catsdogs [OPTIONS] COMMAND")
    assert "plot-curves" in done.stdout


# Runs one command in a fresh interpreter and says whether it imported torch (1.7 s here; more on a laptop's disk).
IMPORTS_TORCH = """
import sys
from click.testing import CliRunner
from catsdogs.cli import main
result = CliRunner().invoke(main, sys.argv[1:], prog_name="catsdogs")
print(result.exit_code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [["download", "--help"], ["train", "--help"], ["compare", "--help"],
                                  ["split", "no-such-folder"]])
def test_help_and_split_start_without_torch(tmp_path: Path, args: list[str]) -> None:
    """Help (click's exit is a RuntimeError, which was checked for a lost torchrun peer) and split (the allocator's
    tuning lived beside the device code) imported torch before: seconds for a typo."""
    done = subprocess.run([sys.executable, "-c", IMPORTS_TORCH, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    code, torch_imported = done.stdout.split()
    assert (int(code) == 0) == (args[-1] == "--help") and torch_imported == "False", done.stdout + done.stderr


def listed_optimizers(text: str) -> dict[str, tuple[str, type, str]]:
    """`catsdogs optimizers` read back: name -> (description, the class its import path names, defaults)."""
    lines = text.splitlines()
    listing = {}
    for first, second in zip(lines[::2], lines[1::2]):
        name, description = first.split(maxsplit=1)
        path, defaults = second.strip().split(": ", 1)
        module, _, attribute = path.rpartition(".")
        listing[name] = (description, getattr(importlib.import_module(module), attribute), defaults)
    return listing


def test_optimizers_lists_the_built_ins_with_their_defaults(cli) -> None:
    listing = listed_optimizers(ok(cli("optimizers")))
    assert list(listing) == list_optimizers()  # test_optim pins the registry itself
    for name, (description, cls, defaults) in listing.items():
        spec = get_optimizer_spec(name)
        assert (description, cls, defaults) == (spec.description, spec.cls, spec.describe_defaults())


@pytest.fixture
def plugin_entry_points(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fake entry points for the optimizer group; they register into a copy of the registry, dropped afterwards."""
    entries: list = []
    monkeypatch.setattr(optim, "OPTIMIZERS", copy.deepcopy(optim.OPTIMIZERS))
    monkeypatch.setattr(optim, "entry_points", lambda group: entries if group == ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(optim, "_plugins_loaded", False)
    return entries


class FakeEntryPoint:
    def __init__(self, name: str, load) -> None:
        self.name, self.value, self.load = name, f"fake_plugin:{name}", load


def test_optimizers_lists_plugins_and_survives_a_broken_one(cli, plugin_entry_points: list) -> None:
    def broken():
        raise ImportError("No module named 'lion_pytorch'")

    plugin_entry_points += [FakeEntryPoint("lion", broken),
                            FakeEntryPoint("rmsprop", lambda: register_optimizer(
                                "plugin-rmsprop", "RMSprop from a plugin", {"lr": 0.01})(torch.optim.RMSprop))]
    result = cli("optimizers")
    text = ok(result)
    spec = get_optimizer_spec("plugin-rmsprop")
    listed = listed_optimizers(text)["plugin-rmsprop"]
    assert listed == (spec.description, torch.optim.RMSprop, spec.describe_defaults())
    assert "warning: optimizer plugin 'lion'" in result.stderr
    assert "No module named 'lion_pytorch'" in result.stderr


def test_models_lists_cnn3_with_its_size_and_cost(cli) -> None:
    (line,) = [line for line in ok(cli("models")).splitlines() if line.startswith("cnn3 ")]
    # 104,800 parameters; forward at 224px: convs 21.3 + 26.9 + 5.3 MFLOP (a multiply-add is 2).
    assert line.split()[1:3] == ["0.10M", "0.053"]
    assert "the tutorial's 3-block CNN" in line


def test_models_at_a_huge_size_counts_without_memory(cli) -> None:
    # cnn3 at 100,000 px: 3.1 billion weights and 120 GB of input if built for real; on the meta device, none.
    (line,) = [line for line in ok(cli("models", "--image-size", "100000")).splitlines() if line.startswith("cnn3 ")]
    assert line.split()[1] == "3123.09M"


def test_models_below_a_models_minimum_size_says_so(cli) -> None:
    (line,) = [line for line in ok(cli("models", "--image-size", "64")).splitlines() if line.startswith("cnn3 ")]
    assert "needs at least 96px" in line


def test_schedulers_lists_each_with_its_description(cli) -> None:
    lines = ok(cli("schedulers")).splitlines()
    assert [line.split()[0] for line in lines] == ["constant", "cosine", "onecycle", "step"]
    assert "The base learning rate throughout" in lines[0]


# --- train --print-config: defaults < --config FILE < flags ---------------------------------------

def test_print_config_fills_the_optimizers_defaults(cli, tmp_path: Path) -> None:
    config = printed_config(cli("train", "--optim", "adam", "--print-config"))
    spec = get_optimizer_spec("adam")
    filled = {key: value for key, value in spec.defaults.items() if key in ("lr", "momentum", "weight_decay")}
    expected = {**TrainConfig().to_dict(), "optim": "adam", "batch_size": spec.batch_size, **filled}
    assert config == expected
    assert list(tmp_path.iterdir()) == []  # printing the config writes nothing


def test_print_config_for_vanilla_sgd_uses_one_image_per_step(cli) -> None:
    config = printed_config(cli("train", "--optim", "vanilla-sgd", "--print-config"))
    spec = get_optimizer_spec("vanilla-sgd")
    assert (config["batch_size"], config["lr"], config["momentum"]) == (1, spec.defaults["lr"], 0.0)


def test_print_config_precedence(cli, tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text("optim: momentum\nepochs: 3\nlr: 0.05\nimage_size: 128\n")
    config = printed_config(cli("train", "--config", "study.yaml", "--lr", "0.2", "--batch-size", "16",
                                "--print-config"))
    assert config["optim"] == "momentum"  # file over default
    assert config["epochs"] == 3  # file over default
    assert config["image_size"] == 128  # file over default
    assert config["lr"] == 0.2  # flag over file
    assert config["batch_size"] == 16  # flag over the optimizer's default
    assert config["momentum"] == get_optimizer_spec("momentum").defaults["momentum"]  # the optimizer's own default
    assert config["hflip"] == 0.25 and config["model"] == "cnn3"  # untouched defaults
    flagged = printed_config(cli("train", "--config", "study.yaml", "--optim", "adam", "--print-config"))
    assert (flagged["optim"], flagged["lr"], flagged["momentum"]) == ("adam", 0.05, None)
    assert config["out"] == flagged["out"] == "runs/study"  # a config's runs are named after it
    named = printed_config(cli("train", "--config", "study.yaml", "--out", "runs/mine", "--print-config"))
    assert named["out"] == "runs/mine"
    (tmp_path / ".yaml").write_text("optim: adam\n")
    assert printed_config(cli("train", "--config", ".yaml", "--print-config"))["out"] == "runs/yaml"  # not hidden


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# What the README promises in configs/: a default, the tutorial's optimizers, the recipes.
SHIPPED_CONFIGS = ["adam.yaml", "default.yaml", "minibatch-sgd.yaml", "momentum.yaml", "recipes/auto.yaml",
                   "recipes/cnn3-best.yaml",
                   "recipes/cpu-best.yaml", "recipes/cpu-fast.yaml", "recipes/cpu-quick.yaml", "recipes/finetune.yaml",
                   "recipes/gpu.yaml", "vanilla-sgd.yaml"]


def test_the_shipped_configs_are_the_documented_ones() -> None:
    assert sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")) == SHIPPED_CONFIGS


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_config_prints(cli, name: str) -> None:
    path = CONFIGS / name
    assert path.is_file(), f"{path} is shipped with catsdogs and must be there"
    config = printed_config(cli("train", "--config", str(path), "--print-config"))
    overrides = read_yaml_overrides(path)
    assert {key: config[key] for key in overrides} == overrides  # what the file sets, as it sets it
    assert config["out"] == f"runs/{path.stem}"
    spec = get_optimizer_spec(config["optim"])  # what it leaves unset: the optimizer's defaults, then ours
    assert config["batch_size"] == overrides.get("batch_size", spec.batch_size)
    assert config["lr"] == overrides.get("lr", spec.defaults["lr"])
    untouched = set(TrainConfig().to_dict()) - set(overrides) - {"out", "batch_size", "lr", "momentum", "weight_decay"}
    assert {key: config[key] for key in untouched} == {key: TrainConfig().to_dict()[key] for key in untouched}


# --- errors: one line, non-zero exit, no traceback -------------------------------------------------

def test_training_needs_an_optimizer(cli) -> None:
    line = one_line_error(cli("train", "--print-config"), 2)
    assert "choose an optimizer with --optim" in line


@pytest.mark.parametrize("extra", [["--print-config"], ["--device", "cpu"]], ids=["print-config", "train"])
def test_unknown_optimizer(cli, tmp_path: Path, extra: list[str]) -> None:
    line = one_line_error(cli("train", "--optim", "lion", *extra), 2)
    assert line == f"Error: unknown optimizer 'lion'; choose one of: {', '.join(list_optimizers())}"
    assert "vanilla-sgd" in line
    assert not (tmp_path / "runs").exists()


def test_unknown_model(cli) -> None:
    line = one_line_error(cli("train", "--optim", "adam", "--model", "resnet50", "--print-config"), 2)
    assert "unknown model 'resnet50'; choose one of: " in line and "cnn3" in line


def test_unknown_config_key_names_the_file_and_the_key(cli, tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text("optim: adam\nlearning_rate: 0.1\n")
    line = one_line_error(cli("train", "--config", "study.yaml", "--print-config"), 1)
    assert "study.yaml" in line and "unknown key 'learning_rate'" in line


def test_wrong_type_in_the_config_names_the_file_and_the_key(cli, tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text("optim: adam\nepochs: ten\n")
    line = one_line_error(cli("train", "--config", "study.yaml", "--print-config"), 1)
    assert line == "Error: study.yaml: epochs must be int, got 'ten'"


def test_a_missing_config_file(cli) -> None:
    line = one_line_error(cli("train", "--config", "nope.yaml", "--print-config"), 1)
    assert "config file nope.yaml does not exist" in line


def test_wrong_type_on_the_command_line(cli) -> None:
    line = one_line_error(cli("train", "--optim", "adam", "--epochs", "ten", "--print-config"), 2)
    assert "'--epochs'" in line and "'ten'" in line


def test_an_image_size_below_cnn3s_minimum_names_96(cli) -> None:
    line = one_line_error(cli("train", "--optim", "adam", "--image-size", "64", "--print-config"), 2)
    assert "at least 96" in line and "64" in line


def test_a_missing_data_folder(cli, tmp_path: Path) -> None:
    line = one_line_error(cli("train", "--optim", "adam", "--data", "nowhere", "--device", "cpu"), 1)
    assert "data folder nowhere does not exist" in line and "catsdogs split" in line
    assert not (tmp_path / "runs").exists()


def test_a_data_folder_with_one_class(cli, tmp_path: Path, tiny_split) -> None:
    data = tiny_split(tmp_path, per_class=(2, 1, 1), size=16)
    for split in ("train", "val", "test"):
        shutil.rmtree(data / split / "Dog")
    line = one_line_error(cli("train", "--optim", "adam", "--image-size", "96", "--device", "cpu"), 1)
    assert "has 1 class folder(s) (Cat)" in line and "at least two" in line
    assert not (tmp_path / "runs").exists()


def test_cuda_on_a_machine_without_it(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(cli("train", "--optim", "adam", "--device", "cuda"), 1)
    assert "--device cuda: no CUDA GPU is visible" in line


def test_resume_needs_a_last_checkpoint(cli, tmp_path: Path) -> None:
    (tmp_path / "runs" / "adam").mkdir(parents=True)
    line = one_line_error(cli("train", "--resume", "runs/adam"), 1)
    assert "runs/adam has no last.pt to resume from" in line
    line = one_line_error(cli("train", "--resume", "runs/adam", "--config", "x.yaml"), 2)
    assert "drop --config" in line


def make_run(folder: Path, history: bool = False) -> Path:
    """A run folder as training starts it: config.yaml, optionally one epoch of history."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("optim: adam\n")
    if history:
        (folder / "history.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
                                            "1,0.69,0.52,0.68,0.55,0.001,2.0\n")
    return folder


@pytest.mark.parametrize("command", ["evaluate", "plot-curves"])
def test_no_runs_yet(cli, command: str) -> None:
    line = one_line_error(cli(command), 1)
    assert "no runs under runs/" in line and "catsdogs train --optim adam" in line


def test_evaluate_a_run_without_checkpoints(cli, tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "adam")
    result = cli("evaluate")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: runs/adam has no best.pt" in result.output
    line = one_line_error(cli("evaluate", "runs/adam", "--checkpoint", "last"), 1)
    assert "runs/adam has no last.pt" in line
    line = one_line_error(cli("train", "--resume", "runs/adma"), 1)
    assert line == "Error: run folder runs/adma does not exist: pass the folder of the run to continue (the one " \
                   "the interrupted run printed)"


def test_evaluate_a_checkpoint_from_elsewhere(cli, tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "adam")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    line = one_line_error(cli("evaluate", "runs/adam", "--checkpoint", "other.pt"), 1)
    assert line == "Error: other.pt is not a catsdogs checkpoint"


def test_evaluate_a_text_file_as_checkpoint(cli, tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "adam")
    (tmp_path / "notes.txt").write_text("hello world\n")
    line = one_line_error(cli("evaluate", "runs/adam", "--checkpoint", "notes.txt"), 1)
    assert "notes.txt" in line


def test_evaluate_a_missing_run_folder(cli) -> None:
    line = one_line_error(cli("evaluate", "runs/ghost"), 1)
    assert "run folder runs/ghost does not exist" in line


def test_plot_curves_of_a_run_without_history(cli, tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "adam")
    line = one_line_error(cli("plot-curves", "runs/adam"), 1)
    assert "runs/adam has no history.csv" in line


def test_plot_curves_of_a_missing_run_folder(cli) -> None:
    line = one_line_error(cli("plot-curves", "runs/ghost"), 1)
    assert "run folder runs/ghost does not exist" in line


def test_plot_curves_refuses_other_formats(cli, tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "adam", history=True)
    line = one_line_error(cli("plot-curves", "runs/adam", "--out", "curves.jpg"), 1)
    assert "use a .png, .svg or .pdf file name" in line


def test_plot_curves_writes_into_the_latest_run(cli, tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "adam", history=True)
    text = ok(cli("plot-curves"))
    assert "plotting the most recent run: runs/adam" in text
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_plot_curves_of_several_runs_writes_one_figure_here(cli, tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "adam", history=True)
    make_run(tmp_path / "runs" / "momentum", history=True)
    ok(cli("plot-curves", "runs/adam", "runs/momentum", "--out", "compare.svg"))
    assert b"<svg" in (tmp_path / "compare.svg").read_bytes()[:400]


def test_a_bad_value_found_after_parsing_is_exactly_one_line(cli) -> None:
    result = cli("train", "--optim", "adam", "--image-size", "50", "--print-config")
    assert result.exit_code == 2
    assert result.output == "Error: model cnn3 needs --image-size of at least 96, got 50\n"


@pytest.mark.parametrize(("args", "code", "reason"), [
    (["plot-curves", "runs/adam", "--out", "afile/x.png"], 1, "afile: File exists"),  # caught by the OSError net
    (["train", "--optim", "adam", "--out", "afile/sub", "--device", "cpu"], 2,
     "--out afile/sub: afile is a file, so the run folder cannot be made there"),  # checked before any work
])
def test_a_file_in_the_way_is_one_line_not_a_traceback(cli, tmp_path: Path, tiny_split, args: list[str], code: int,
                                                       reason: str) -> None:
    make_run(tmp_path / "runs" / "adam", history=True)
    tiny_split(tmp_path, size=96)
    (tmp_path / "afile").write_text("a file, not a folder")
    line = one_line_error(cli(*args), code)
    assert line == f"Error: {reason}"
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


def option(command: str, name: str) -> click.Option:
    return next(p for p in main.commands[command].params if p.name == name)


def test_choices_are_the_library_s_own_and_starting_the_cli_imports_none_of_them() -> None:
    from catsdogs.data.split import LAYOUTS, MODES, SPLITS
    from catsdogs.inference.export import FORMATS
    from catsdogs.training.config import declared_settings
    from catsdogs.training.scoring import TTA_MODES

    assert tuple(option("evaluate", "split_name").type.choices) == SPLITS
    assert tuple(option("show", "split_name").type.choices) == SPLITS
    assert tuple(option("evaluate", "tta_mode").type.choices) == TTA_MODES
    assert tuple(option("split", "layout").type.choices) == LAYOUTS
    assert tuple(option("split", "mode").type.choices) == MODES
    assert tuple(option("export", "fmt").type.choices) == tuple(FORMATS)
    device = declared_settings()["device"]
    assert "Where to run" in device.help
    for command in ("evaluate", "predict", "explain"):
        got = option(command, "device")
        assert (got.opts, tuple(got.type.choices), got.default, got.help) == ([device.flag], device.choices, "auto",
                                                                            device.help)
    train = option("train", "device")
    assert tuple(train.type.choices) == device.choices and train.help == f"{device.help} [default: auto]"
    refused = CliRunner().invoke(main, ["evaluate", "--tta-mode", "mirror"])
    assert refused.exit_code == 2 and "'mirror' is not one of 'flip', 'flip-shift'" in refused.output
    started = subprocess.run([sys.executable, "-c", "import sys, catsdogs.cli; "
                              "print(sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))"],
                             capture_output=True, text=True, timeout=60)
    assert started.stdout.strip() == "[]", started.stderr

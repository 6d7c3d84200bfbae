"""Tests for catsdogs.training.config: defaults < YAML file < flags, and errors naming the file and the key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from catsdogs.cli import main
from catsdogs.errors import CatsdogsError
from catsdogs.training.config import (TrainConfig, build_config, check_value, config_from_dict, config_to_yaml,
                                      declared_settings, read_yaml_overrides, settings_with)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_yaml(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_tutorials() -> None:
    cfg = TrainConfig()
    assert (cfg.model, cfg.image_size, cfg.hflip, cfg.vflip, cfg.epochs) == ("cnn3", 224, 0.25, 0.0, 10)
    assert (cfg.optim, cfg.batch_size, cfg.lr, cfg.data, cfg.seed) == (None, None, None, "data", 42)


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "optim: momentum\nepochs: 3\nlr: 0.05\nimage_size: 128\n")
    cfg = build_config(path, {"lr": 0.2, "epochs": None, "optim": "adam", "seed": 7})
    assert cfg.optim == "adam"  # flag over file
    assert cfg.lr == 0.2  # flag over file
    assert cfg.epochs == 3  # file; the flag was not given (None)
    assert cfg.image_size == 128  # file over default
    assert cfg.seed == 7  # flag over default
    assert cfg.model == "cnn3" and cfg.hflip == 0.25  # untouched defaults


def test_no_file_and_no_flags_gives_the_defaults() -> None:
    assert build_config() == TrainConfig()


def test_an_empty_file_overrides_nothing(tmp_path: Path) -> None:
    assert build_config(write_yaml(tmp_path, "# only a comment\n")) == TrainConfig()


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "optim: adam\nepoch: 3\n")
    with pytest.raises(CatsdogsError) as info:
        build_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "'epoch'" in message
    assert "epochs" in message  # the valid keys are listed, so the typo is easy to spot


def test_wrong_type_names_the_file_the_key_and_the_value(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "epochs: three\n")
    with pytest.raises(CatsdogsError) as info:
        read_yaml_overrides(path)
    message = str(info.value)
    assert str(path) in message and "epochs" in message and "int" in message and "'three'" in message


@pytest.mark.parametrize(("text", "key", "expected"), [("lr: 1\n", "lr", 1.0), ("hflip: 1\n", "hflip", 1.0),
                                                       ("warmup_epochs: 2\n", "warmup_epochs", 2.0)])
def test_an_int_is_accepted_for_a_float_field(tmp_path: Path, text: str, key: str, expected: float) -> None:
    value = read_yaml_overrides(write_yaml(tmp_path, text))[key]
    assert value == expected and type(value) is float


@pytest.mark.parametrize("text", ["epochs: true\n", "batch_size: false\n", "seed: yes\n", "lr: true\n"])
def test_a_bool_is_refused_for_a_number(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(CatsdogsError, match="must be (int|float), got (True|False)") as info:
        read_yaml_overrides(path)
    assert str(path) in str(info.value) and text.split(":")[0] in str(info.value)


def test_a_float_is_refused_for_an_int_field(tmp_path: Path) -> None:
    with pytest.raises(CatsdogsError, match="batch_size must be int, got 32.5"):
        read_yaml_overrides(write_yaml(tmp_path, "batch_size: 32.5\n"))


@pytest.mark.parametrize(("text", "choices"), [("precision: fp64\n", "auto, fp32, bf16, fp16"),
                                               ("device: tpu\n", "auto, cpu, cuda, mps"),
                                               ("cache: maybe\n", "auto, off, rebuild")])
def test_choices_are_validated(tmp_path: Path, text: str, choices: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(CatsdogsError) as info:
        read_yaml_overrides(path)
    assert str(path) in str(info.value) and choices in str(info.value)


@pytest.mark.parametrize("choice", ["auto", "fp32", "bf16", "fp16"])
def test_every_precision_choice_is_accepted(choice: str) -> None:
    assert build_config(flags={"precision": choice}).precision == choice


@pytest.mark.parametrize(("text", "fragment"), [("epochs: 0\n", "epochs must be at least 1"),
                                                ("lr: -0.1\n", "lr must be at least 0"),
                                                ("workers: -1\n", "workers must be at least 0"),
                                                ("image_size: 20000\n", "image_size must be at most 2048"),
                                                ("hflip: 1.5\n", "hflip is a probability between 0 and 1"),
                                                ("vflip: -0.5\n", "vflip must be at least 0"),
                                                ("label_smoothing: 1\n", "label_smoothing must be below 1"),
                                                ("momentum: 1.0\n", "momentum must be below 1"),
                                                ("ema: 1\n", r"ema must be a decay below 1 \(e.g. 0.999; 0: off\)"),
                                                ("ema: -0.1\n", r"ema must be at least 0 \(0: off\)"),
                                                ("time_budget: -1\n", r"time_budget must be at least 0 \(0: off\)")])
def test_out_of_range_values_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(CatsdogsError, match=fragment):
        read_yaml_overrides(write_yaml(tmp_path, text))


@pytest.mark.parametrize("text", ["lr: .nan\n", "hflip: .nan\n", "lr: .inf\n"])
def test_nan_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(CatsdogsError, match="must be a finite number"):
        read_yaml_overrides(write_yaml(tmp_path, text))


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatsdogsError, match=r"not valid YAML \(line 2\): key 'epochs' appears twice"):
        read_yaml_overrides(write_yaml(tmp_path, "epochs: 3\nepochs: 5\n"))


def test_null_is_allowed_only_where_the_default_may_be_none(tmp_path: Path) -> None:
    assert read_yaml_overrides(write_yaml(tmp_path, "lr: null\nbatch_size: ~\n")) == {"lr": None, "batch_size": None}
    path = write_yaml(tmp_path, "epochs:\n", name="empty.yaml")
    with pytest.raises(CatsdogsError, match="epochs must not be empty") as info:
        read_yaml_overrides(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatsdogsError, match="does not exist") as info:
        build_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_a_list_at_the_top_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatsdogsError, match="expected a mapping"):
        read_yaml_overrides(write_yaml(tmp_path, "- optim\n- adam\n"))


def test_broken_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "optim: adam\nepochs: [1, 2\n")
    with pytest.raises(CatsdogsError, match=r"not valid YAML \(line \d+\)") as info:
        read_yaml_overrides(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"# caf\xe9\noptim: adam\n")  # a comment saved by a Latin-1 editor
    with pytest.raises(CatsdogsError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at position 5\): save it as"):
        read_yaml_overrides(latin1)
    photo = tmp_path / "holiday.jpg"  # the wrong file passed to --config
    photo.write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF")
    result = CliRunner().invoke(main, ["train", "--config", str(photo), "--print-config"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {photo}: not UTF-8 text (byte 0xff at position 0)")


def test_a_bad_flag_is_named_as_a_flag() -> None:
    with pytest.raises(CatsdogsError, match="--image-size: image_size must be int, got 'big'"):
        build_config(flags={"image_size": "big"})


def test_check_value_names_its_source() -> None:
    with pytest.raises(CatsdogsError, match="^somewhere: optim must be str, got 3$"):
        check_value("optim", 3, "somewhere")
    assert check_value("epochs", 5, "somewhere") == 5


def test_config_round_trips_through_yaml_and_dict() -> None:
    cfg = TrainConfig(optim="momentum", lr=0.02, batch_size=16, image_size=150, scheduler="cosine", out="runs/x")
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg)), "config.yaml") == cfg
    assert list(yaml.safe_load(config_to_yaml(cfg))) == [field.name for field in dataclasses.fields(TrainConfig)]


def test_a_saved_config_with_a_bad_key_is_refused_naming_its_source() -> None:
    saved = {**TrainConfig().to_dict(), "colour": "red"}
    with pytest.raises(CatsdogsError, match="runs/adam/config.yaml: unknown key 'colour'"):
        config_from_dict(saved, "runs/adam/config.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_are_valid_overrides(path: Path) -> None:
    overrides = read_yaml_overrides(path)
    assert overrides, f"{path} overrides nothing"
    expected_optim = "adam" if path.stem == "default" else path.stem
    assert build_config(path).optim == expected_optim


@pytest.mark.parametrize(("text", "key", "expected"), [("lr: 1e-3", "lr", 0.001), ("weight_decay: 5E-4", "weight_decay", 0.0005),
                                                      ("lr: 2.5e-2", "lr", 0.025), ("lr: +1e-1", "lr", 0.1)])
def test_exponents_without_a_dot_are_numbers(tmp_path: Path, text: str, key: str, expected: float) -> None:
    # YAML 1.1 (PyYAML) would read "1e-3" as a string; it is how people write learning rates.
    (tmp_path / "c.yaml").write_text(text + "\n")
    assert read_yaml_overrides(tmp_path / "c.yaml") == {key: pytest.approx(expected)}


@pytest.mark.parametrize("key", ["pretrained", "data", "out", "model"])
def test_an_empty_string_is_refused_not_taken_as_none(key: str) -> None:
    with pytest.raises(CatsdogsError, match=f"--{key.replace('_', '-')}: {key} must not be empty"):
        build_config(flags={key: "", "optim": "adam"})


def test_zero_that_would_do_nothing_is_refused() -> None:
    with pytest.raises(CatsdogsError, match="lr must be above 0, got 0.0"):
        check_value("lr", 0.0, "test")
    assert check_value("lr", 0.5, "test") == 0.5


def test_a_flag_of_0_turns_off_what_a_config_file_turns_on(tmp_path: Path) -> None:
    recipe = write_yaml(tmp_path, "optim: adam\nema: 0.999\ntime_budget: 20\npatience: 3\n")
    assert (build_config(recipe).ema, build_config(recipe).time_budget) == (0.999, 20.0)
    off = build_config(recipe, {"ema": 0.0, "time_budget": 0.0, "patience": 0})
    assert (off.ema, off.time_budget, off.patience) == (0.0, 0.0, 0)


# --- each setting declared once: flags, --print-config, the loader and the study's lists come from it ----

def test_the_roles_are_todays() -> None:
    assert settings_with("per_run") == ("optim", "batch_size", "lr", "momentum", "frontier", "time_budget", "seed", "out")
    assert set(settings_with("resumable")) == {"epochs", "device", "workers", "cache", "patience", "precision",
                                               "time_budget", "data", "micro_batch", "tensorboard"}
    assert settings_with("free") == ("cache", "workers", "tensorboard")
    assert set(settings_with("free")) <= set(settings_with("resumable"))  # a study resumes with today's
    assert set(settings_with("shared")) == set(TrainConfig().to_dict()) - {*settings_with("per_run"),
                                                                            *settings_with("free")}
    with pytest.raises(ValueError, match="unknown setting role 'fast'"):
        settings_with("fast")


def test_help_shows_the_dataclass_default_and_choices() -> None:
    declared = declared_settings()
    assert declared["image_size"].shown_default() == str(TrainConfig().image_size)
    assert declared["label_smoothing"].shown_default() == "0"
    assert declared["lr"].shown_default() == "the optimizer's"  # None: the words the declaration gives
    assert declared["tensorboard"].shown_default() == ""  # a switch shows none
    device = next(p for p in main.commands["train"].params if p.name == "device")
    assert tuple(device.type.choices) == declared["device"].choices
    assert "[default: auto]" in device.help


# A setting added the way a contributor would, in TrainConfig alone (here a subclass standing in for it).
ADD_SETTINGS = r'''
import dataclasses, json, sys
import catsdogs.training.config as config

@dataclasses.dataclass
class WithNewSettings(config.TrainConfig):
    widgets: int = config.setting(3, help="Widgets per photo.", resumable=True, free=True, minimum=1, maximum=9)
    gizmo: float | None = config.setting(None, help="Gizmo of each run.", per_run="the study picks it", minimum=0.0,
                                         off_at_zero=True, below_one="below 1 (a share of the photo)")

config.TrainConfig = WithNewSettings  # as if the two fields were written in TrainConfig itself

from click.testing import CliRunner
from catsdogs.cli import main

def run(*args):
    result = CliRunner().invoke(main, list(args))
    return {"code": result.exit_code, "output": result.output}

json.dump({"train_help": run("train", "--help"), "compare_help": run("compare", "--help"),
           "printed": run("train", "--optim", "adam", "--widgets", "5", "--gizmo", "0.5", "--print-config"),
           "from_file": run("train", "--config", sys.argv[1], "--print-config"),
           "wrong_type": run("train", "--config", sys.argv[2], "--print-config"),
           "too_many": run("train", "--optim", "adam", "--widgets", "10", "--print-config"),
           "too_few": run("train", "--config", sys.argv[1], "--widgets", "0", "--print-config"),
           "negative": run("train", "--optim", "adam", "--gizmo", "-0.5", "--print-config"),
           "whole": run("train", "--optim", "adam", "--gizmo", "1", "--print-config"),
           "roles": {role: config.settings_with(role) for role in config.ROLES}}, sys.stdout)
'''


def test_a_setting_declared_in_one_place_reaches_every_table(tmp_path: Path) -> None:
    good, bad = write_yaml(tmp_path, "optim: adam\nwidgets: 7\n"), write_yaml(tmp_path, "widgets: many\n", "bad.yaml")
    done = subprocess.run([sys.executable, "-c", ADD_SETTINGS, str(good), str(bad)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    train_help = seen["train_help"]["output"]
    assert "--widgets INTEGER" in train_help and "Widgets per photo. [default: 3]" in train_help
    assert "--gizmo FLOAT" in train_help
    compare_help = seen["compare_help"]["output"]
    assert "--widgets" in compare_help and "--gizmo" not in compare_help  # a study sets gizmo per run
    printed = seen["printed"]
    assert printed["code"] == 0, printed["output"]
    assert yaml.safe_load(printed["output"])["widgets"] == 5 and yaml.safe_load(printed["output"])["gizmo"] == 0.5
    assert yaml.safe_load(seen["from_file"]["output"])["widgets"] == 7  # the YAML key is accepted, and checked:
    assert seen["wrong_type"]["code"] == 1 and f"{bad}: widgets must be int, got 'many'" in seen["wrong_type"]["output"]
    for name, message in [("too_many", "widgets must be at most 9, got 10"),
                          ("too_few", "widgets must be at least 1, got 0"),
                          ("negative", "gizmo must be at least 0 (0: off), got -0.5"),
                          ("whole", "gizmo must be below 1 (a share of the photo), got 1.0")]:
        assert seen[name]["code"] != 0 and message in seen[name]["output"], (name, seen[name])
    roles = seen["roles"]
    assert "widgets" in roles["resumable"] and "widgets" in roles["free"] and "widgets" not in roles["shared"]
    assert "gizmo" in roles["per_run"] and "gizmo" not in roles["shared"] and "gizmo" not in roles["resumable"]

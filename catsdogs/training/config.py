"""The typed training config: defaults here, overridden by a YAML file, overridden by flags."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from catsdogs.errors import CatsdogsError, UsageError


@dataclass
class TrainConfig:
    """Every setting of a training run. These are the only defaults; YAML files override them."""

    # Data: the folder written by `catsdogs split` (holding train/, val/, test/).
    data: str = "data"
    image_size: int = 224  # the tutorial's 224x224
    hflip: float = 0.25  # probability of a horizontal flip in training (the tutorial's 0.25)
    vflip: float = 0.0  # probability of a vertical flip in training (off, as in the tutorial)
    augment: str = "flip"  # flip|crop|rrc|rrc-jitter|trivialaugment|randaugment (see `catsdogs augments`)
    # random: each image mirrored with probability hflip; alternate: each image mirrored in every other
    # epoch (half of the images in odd epochs, the other half in even ones), so every pair of epochs
    # sees each image both ways (airbench's derandomised flips; hflip is then unused).
    hflip_mode: str = "random"
    # Progressive resizing: the first progressive_fraction of the schedule's steps train on images scaled
    # down to progressive_size (cheaper steps: FLOPs go with the square of the side), the rest at
    # image_size. Validation is always at image_size. None or 0: off.
    progressive_size: int | None = None
    progressive_fraction: float = 0.5
    cache: str = "auto"  # auto|off|rebuild: decode each split once into a memory-mapped uint8 array (rebuild:
    # decode again, in the run that asks only; that run saves auto)

    # Model and optimizer: names from `catsdogs models` and `catsdogs optimizers`.
    model: str = "cnn3"
    pretrained: str | None = None  # torchvision weights: "imagenet" (downloaded once), a file, or "cache"
    optim: str | None = None  # required: there is no neutral choice in an optimizer study
    epochs: int = 10
    batch_size: int | None = None  # None: the optimizer's own default (1 for vanilla-sgd)
    lr: float | None = None  # None: the optimizer's own default
    momentum: float | None = None  # None: the optimizer's own default (SGD variants only)
    weight_decay: float | None = None  # None: the optimizer's own default; never on biases or norms
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0.1 is common)
    # none, or balanced: each class's loss weighted by photos / (classes x its photos), so that
    # a class with few photos counts as much as a large one.
    class_weights: str = "none"
    ema: float | None = None  # decay of an exponential moving average of the weights (e.g. 0.999); 0: off
    # Lookahead around the optimizer: every lookahead_steps steps, slow weights move lookahead_alpha of the
    # way to the model's weights, and training goes on from there. None or 0: off.
    lookahead_steps: int | None = None
    lookahead_alpha: float = 0.5
    # Fine-tuning. The head is the model's last linear layer (the one sized by the number of classes);
    # the body is every other layer. lr is the head's; the body's is lr x body_lr_scale.
    freeze_epochs: int = 0  # epochs at the start that train the head alone, the body frozen
    body_lr_scale: float = 1.0  # the body's learning rate as a fraction of lr (e.g. 0.1 for pretrained weights)

    # Schedule and stopping.
    scheduler: str = "constant"  # constant|step|cosine|onecycle (see `catsdogs schedulers`)
    warmup_epochs: float = 0.0  # linear warmup before the schedule, in epochs
    patience: int | None = None  # stop when val accuracy has not improved for this many epochs; 0: off
    time_budget: float | None = None  # minutes of training; stops then, and the schedule is fitted to it; 0: off

    # Reproducibility and hardware.
    seed: int = 42
    device: str = "auto"  # auto|cpu|cuda|mps; auto picks CUDA, then MPS, then CPU
    precision: str = "auto"  # auto|fp32|bf16|fp16; auto: bf16 where the hardware has it, else fp32
    workers: int | None = None  # DataLoader worker processes when reading files; None: automatic
    # Images per forward/backward pass (gradient accumulation): a batch takes several passes whose
    # gradients add up to the batch's (except that batch norm sees each pass alone), in less memory.
    # None: the whole batch in one pass.
    micro_batch: int | None = None

    # Output: the run folder; None means runs/<optim>, numbered when it exists.
    out: str | None = None
    tensorboard: bool = False  # also write TensorBoard event files into RUN_DIR/tb (needs catsdogs[tensorboard])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "cache": ("auto", "off", "rebuild"),
    "hflip_mode": ("random", "alternate"),
    "class_weights": ("none", "balanced"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}

# Lower bounds of numeric fields (inclusive); an upper bound of 1 for probabilities.
MINIMUM: dict[str, float] = {"epochs": 1, "batch_size": 1, "image_size": 1, "lr": 0.0, "hflip": 0.0,
                             "vflip": 0.0, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0.0,
                             "patience": 0, "workers": 0, "time_budget": 0.0, "label_smoothing": 0.0, "ema": 0.0,
                             "micro_batch": 1, "progressive_size": 0, "progressive_fraction": 0.0,
                             "freeze_epochs": 0, "body_lr_scale": 0.0,
                             "lookahead_steps": 0, "lookahead_alpha": 0.0}
# Upper bounds: photos are resized to image_size squared, and past this nothing is gained for a
# two-class photo classifier while the decoded cache grows with the square (2048 px: 12 MB a photo).
MAXIMUM: dict[str, float] = {"image_size": 2048, "progressive_size": 2048, "progressive_fraction": 1.0,
                             "lookahead_alpha": 1.0}
PROBABILITIES = ("hflip", "vflip")
# Fields where 0 would silently do nothing (no learning): they must be above 0.
POSITIVE = ("lr", "body_lr_scale", "lookahead_alpha")
# Fields where 0 means off, so that a flag can undo what a config file turns on (--ema 0).
OFF_AT_ZERO = ("ema", "time_budget", "patience", "progressive_size", "lookahead_steps")
# Fields that must stay below 1: at 1 nothing is learnt (label smoothing) or the steps never fade (momentum).
BELOW_ONE = {"ema": "a decay below 1 (e.g. 0.999; 0: off)", "label_smoothing": "below 1 (e.g. 0.1; 1 leaves "
             "nothing to learn)", "momentum": "below 1 (e.g. 0.9; at 1 or more the steps grow without end)"}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _allowed(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """The concrete types a field accepts, and whether None is allowed."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = tuple(a for a in args if a is not type(None))
        return kinds, type(None) in args
    return (annotation,), False


def check_value(key: str, value: Any, source: str) -> Any:
    """Return `value` converted for field `key`, or raise naming the source, key and expectation."""
    hints = _field_types()
    if key not in hints:
        valid = ", ".join(sorted(hints))
        raise CatsdogsError(f"{source}: unknown key {key!r}; valid keys: {valid}")
    kinds, nullable = _allowed(hints[key])
    if value is None:
        if nullable:
            return None
        raise CatsdogsError(f"{source}: {key} must not be empty")
    kind = kinds[0]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise CatsdogsError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    if isinstance(value, str) and not value.strip():  # --pretrained "$UNSET" must not mean "none"
        raise CatsdogsError(f"{source}: {key} must not be empty")
    if isinstance(value, float) and not math.isfinite(value):
        raise CatsdogsError(f"{source}: {key} must be a finite number, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise CatsdogsError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in MINIMUM and value < MINIMUM[key]:
        raise CatsdogsError(f"{source}: {key} must be at least {MINIMUM[key]:g}"
                            + (" (0: off)" if key in OFF_AT_ZERO else "") + f", got {value!r}")
    if key in MAXIMUM and value > MAXIMUM[key]:
        raise CatsdogsError(f"{source}: {key} must be at most {MAXIMUM[key]:g}, got {value!r}")
    if key in POSITIVE and value <= 0:
        raise CatsdogsError(f"{source}: {key} must be above 0, got {value!r}")
    if key in BELOW_ONE and value >= 1:
        raise CatsdogsError(f"{source}: {key} must be {BELOW_ONE[key]}, got {value!r}")
    if key in PROBABILITIES and value > 1:
        raise CatsdogsError(f"{source}: {key} is a probability between 0 and 1, got {value!r}")
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice instead of silently keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1, which PyYAML follows, reads 1e-3 as a string (it wants 1.0e-3); people write learning
# rates as 1e-3, so exponents without a dot are floats here too.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into validated overrides; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise CatsdogsError(f"config file {path} does not exist: check the path (the shipped ones are in configs/ "
                            "and configs/recipes/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CatsdogsError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}): "
                            "save it as UTF-8, or check that it is the config file you meant") from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        problem = getattr(exc, "problem", None)
        raise CatsdogsError(f"{path}: not valid YAML{where}" + (f": {problem}" if problem else "")) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise CatsdogsError(f"{path}: expected a mapping of keys to values at the top level")
    return {str(key): check_value(str(key), value, str(path)) for key, value in loaded.items()}


def build_config(config_file: str | Path | None = None, flags: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < YAML file < flags. Flags whose value is None were not given and do not override."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_yaml_overrides(config_file))
    for key, value in (flags or {}).items():
        if value is not None:
            try:
                values[key] = check_value(key, value, f"--{key.replace('_', '-')}")
            except CatsdogsError as exc:
                raise UsageError(str(exc)) from None  # a bad flag is a usage error (exit 2), like click's own
    return TrainConfig(**values)


def config_from_dict(values: Mapping[str, Any], source: str) -> TrainConfig:
    """Rebuild a config saved in a run folder or checkpoint, validating every key."""
    return TrainConfig(**{key: check_value(key, value, source) for key, value in values.items()})


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = ["TrainConfig", "build_config", "check_value", "config_from_dict", "config_to_yaml",
           "read_yaml_overrides"]

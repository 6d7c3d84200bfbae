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


@dataclass(frozen=True)
class Setting:
    """What a TrainConfig field declares beside its type and default: its flag, choices and roles.

    Roles: `per_run`, a study sets it for each run itself (the text says how, for the error that
    refuses it in a study's config file); `resumable`, a resumed run may change it; `free`, it
    changes speed or logging, never what a run learns. `shared`, the study report's table of what
    all runs had alike, is every setting neither per-run nor free. Query them with settings_with().
    """

    help: str = ""  # the help of its `train` flag; "" for a config-file key without a flag
    default_text: str = ""  # what --help says the default is where the field's own is None
    choices: tuple[str, ...] = ()
    # Bounds of a number, checked by check_value: `minimum` and `maximum` inclusive; `off_at_zero`, 0 turns
    # it off (so that a flag can undo what a config file turns on: --ema 0); `above_zero`, 0 would silently
    # do nothing; `below_one`, what it must be instead of 1 or more, in words; `probability`, at most 1.
    minimum: float | None = None
    maximum: float | None = None
    off_at_zero: bool = False
    above_zero: bool = False
    below_one: str = ""
    probability: bool = False
    per_run: str = ""
    resumable: bool = False
    free: bool = False
    # Filled in from the field by declared_settings():
    name: str = ""
    kind: type = object  # bool, int, float or str
    nullable: bool = False
    default: Any = None

    @property
    def shared(self) -> bool:
        return not (self.per_run or self.free)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def shown_default(self) -> str:
        """The default as --help shows it, "" where it shows none (a switch, or None without words)."""
        if self.kind is bool or self.default is None:
            return self.default_text
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


ROLES = ("per_run", "resumable", "free", "shared")
_SETTING = "setting"  # the key of a field's Setting in its dataclasses metadata


def setting(default: Any, **facts: Any) -> Any:
    """A TrainConfig field with its default and its Setting facts (see Setting)."""
    return dataclasses.field(default=default, metadata={_SETTING: Setting(**facts)})


_THE_OPTIMIZERS = "the optimizer's"
# Photos are resized to image_size squared, and past this nothing is gained for a two-class photo
# classifier while the decoded cache grows with the square (2048 px: 12 MB a photo).
_LARGEST_SIDE = 2048


@dataclass
class TrainConfig:
    """Every setting of a training run. These are the only defaults; YAML files override them.

    A field with a `setting(...)` has a `train` flag (where it has help) and roles (see Setting);
    a plain field is a config-file key, shared by a study's runs and fixed on resume.
    """

    # Data: the folder written by `catsdogs split` (holding train/, val/, test/).
    data: str = setting("data", help="Split folder from `catsdogs split`.", resumable=True)
    # the tutorial's 224x224
    image_size: int = setting(224, minimum=1, maximum=_LARGEST_SIDE, help="Side of the square input.")
    # probability of a horizontal flip in training (the tutorial's 0.25)
    hflip: float = setting(0.25, minimum=0.0, probability=True)
    # probability of a vertical flip in training (off, as in the tutorial)
    vflip: float = setting(0.0, minimum=0.0, probability=True)
    # flip|crop|rrc|rrc-jitter|trivialaugment|randaugment (see `catsdogs augments`)
    augment: str = setting("flip", help="Augmentation preset (see `catsdogs augments`).")
    # random: each image mirrored with probability hflip; alternate: each image mirrored in every other
    # epoch (half of the images in odd epochs, the other half in even ones), so every pair of epochs
    # sees each image both ways (airbench's derandomised flips; hflip is then unused).
    hflip_mode: str = setting("random", choices=("random", "alternate"))
    # Progressive resizing: the first progressive_fraction of the schedule's steps train on images scaled
    # down to progressive_size (cheaper steps: FLOPs go with the square of the side), the rest at
    # image_size. Validation is always at image_size. None or 0: off.
    progressive_size: int | None = setting(None, minimum=0, maximum=_LARGEST_SIDE, off_at_zero=True)
    progressive_fraction: float = setting(0.5, minimum=0.0, maximum=1.0)
    # auto|off|rebuild: decode each split once into a memory-mapped uint8 array (rebuild: decode again,
    # in the run that asks only; that run saves auto)
    cache: str = setting("auto", choices=("auto", "off", "rebuild"), resumable=True, free=True,
                         help="Decode each split once into a memory-mapped array (rebuild: decode again, in this "
                              "run only).")

    # Model and optimizer: names from `catsdogs models` and `catsdogs optimizers`.
    model: str = setting("cnn3", help="Model name (see `catsdogs models`).")
    # torchvision weights: "imagenet" (downloaded once), a file, or "cache"
    pretrained: str | None = setting(None, help="Start from torchvision ImageNet weights: 'imagenet' (downloaded "
                                     "once into torch's hub cache), a file, or 'cache' (the hub cache only, never "
                                     "downloading).")
    # required: there is no neutral choice in an optimizer study
    optim: str | None = setting(None, help="Optimizer name (see `catsdogs optimizers`).",
                                per_run="list optimizers with --optims")
    epochs: int = setting(10, minimum=1, help="Epochs to train.", resumable=True)
    # None: the optimizer's own default (1 for vanilla-sgd)
    batch_size: int | None = setting(None, minimum=1, help="Images per step.", default_text=_THE_OPTIMIZERS,
                                     per_run="each optimizer uses its own (1 for vanilla-sgd)")
    lr: float | None = setting(None, help="Learning rate.", default_text=_THE_OPTIMIZERS,  # None: the optimizer's
                               minimum=0.0, above_zero=True,
                               per_run="each optimizer uses its own (or --tune-lr)")
    # None: the optimizer's own default (SGD variants only)
    momentum: float | None = setting(None, help="SGD momentum.", default_text=_THE_OPTIMIZERS,
                                     per_run="each optimizer uses its own", minimum=0.0,
                                     below_one="below 1 (e.g. 0.9; at 1 or more the steps grow without end)")
    # None: the optimizer's own default; never on biases or norms
    weight_decay: float | None = setting(None, minimum=0.0, help="Weight decay (never on biases or norms).",
                                         default_text=_THE_OPTIMIZERS)
    label_smoothing: float = setting(0.0, help="Cross-entropy label smoothing.", minimum=0.0,  # 0.1 is common
                                     below_one="below 1 (e.g. 0.1; 1 leaves nothing to learn)")
    # none, or balanced: each class's loss weighted by photos / (classes x its photos), so that
    # a class with few photos counts as much as a large one.
    class_weights: str = setting("none", choices=("none", "balanced"),
                                 help="balanced: weight each class's loss by how rare it is, for unbalanced photos.")
    # decay of an exponential moving average of the weights (e.g. 0.999); 0: off
    ema: float | None = setting(None, help="Keep and use an exponential moving average of the weights with this "
                                "decay, e.g. 0.999 (0: off).", minimum=0.0, off_at_zero=True,
                                below_one="a decay below 1 (e.g. 0.999; 0: off)")
    # Lookahead around the optimizer: every lookahead_steps steps, slow weights move lookahead_alpha of the
    # way to the model's weights, and training goes on from there. None or 0: off.
    lookahead_steps: int | None = setting(None, minimum=0, off_at_zero=True)
    lookahead_alpha: float = setting(0.5, minimum=0.0, maximum=1.0, above_zero=True)
    # Fine-tuning. The head is the model's last linear layer (the one sized by the number of classes);
    # the body is every other layer. lr is the head's; the body's is lr x body_lr_scale.
    freeze_epochs: int = setting(0, minimum=0)  # epochs at the start that train the head alone, the body frozen
    # the body's learning rate as a fraction of lr (e.g. 0.1 for pretrained weights)
    body_lr_scale: float = setting(1.0, minimum=0.0, above_zero=True)
    # Tricks of the fast small-image recipes (airbench, Myrtle), catsdogs/training/tricks.py:
    # the batch-norm layers' running-statistics momentum, in torch's sense (the new batch's weight: torch's
    # default is 0.1; airbench's "0.6" is 0.4 here). None: the model's own.
    bn_momentum: float | None = setting(None, minimum=0.0, maximum=1.0, above_zero=True)
    # the batch-norm biases' learning rate as a multiple of lr (airbench: 64)
    bn_bias_lr_scale: float = setting(1.0, minimum=0.0, above_zero=True)
    # a new run's first convolution starts from the whitening of 3x3... patches of training photos: its
    # filters are the patches' main directions scaled to unit variance, each with its negative
    whiten_stem: bool = setting(False)
    # the batch size lr is given for: with another batch_size, the lr used is lr x batch_size / lr_batch
    # (the linear scaling rule). None or 0: lr as given.
    lr_batch: int | None = setting(None, minimum=0, off_at_zero=True)

    # Schedule and stopping.
    # constant|step|cosine|onecycle (see `catsdogs schedulers`)
    scheduler: str = setting("constant", help="Learning-rate schedule (see `catsdogs schedulers`).")
    warmup_epochs: float = setting(0.0, minimum=0.0)  # linear warmup before the schedule, in epochs
    # stop when val accuracy has not improved for this many epochs; 0: off
    patience: int | None = setting(None, resumable=True, minimum=0, off_at_zero=True,
                                   help="Stop after this many epochs without a better val accuracy (0: never).")
    # auto (configs/recipes/auto.yaml): before a new run starts, choose model, image_size, progressive_size,
    # progressive_fraction and an epoch cap from the measured compute frontier, for time_budget minutes at this
    # machine's measured speed (catsdogs/training/frontier.py). Needs time_budget.
    frontier: bool = setting(False, per_run="a study compares optimizers on one model: name it with model and "
                                            "image_size instead")
    # minutes of training; stops then, and the schedule is fitted to it; 0: off
    time_budget: float | None = setting(None, resumable=True, per_run="use --budget seconds:S", minimum=0.0,
                                        off_at_zero=True,
                                        help="Minutes of training: stop then, fitting the schedule to the time "
                                             "(0: no budget).")

    # Reproducibility and hardware.
    seed: int = setting(42, help="Seed for weights, order and augmentation.",
                        per_run="a study's seeds count up from it, one per --seeds")
    device: str = setting("auto", choices=("auto", "cpu", "cuda", "mps"), resumable=True,
                          help="Where to run: auto picks CUDA, then MPS, then the CPU.")
    # auto: bf16 where the hardware has it, else fp32
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"), resumable=True,
                             help="Numeric precision; auto uses bf16 where the hardware has it.")
    # DataLoader worker processes when reading files; None: automatic
    workers: int | None = setting(None, help="Loader processes when not cached.", default_text="auto",
                                  resumable=True, free=True, minimum=0)
    # Images per forward/backward pass (gradient accumulation): a batch takes several passes whose
    # gradients add up to the batch's (except that batch norm sees each pass alone), in less memory.
    # None: the whole batch in one pass.
    micro_batch: int | None = setting(None, resumable=True, default_text="the whole batch", minimum=1,
                                      help="Images per forward/backward pass: a batch takes several, with the same "
                                           "gradient, in less memory.")

    # Output: the run folder; None means runs/<optim>, numbered when it exists.
    out: str | None = setting(None, help="Run folder.", default_text="runs/<optim>, numbered if it exists",
                              per_run="use --out STUDY_DIR")
    # also write TensorBoard event files into RUN_DIR/tb (needs catsdogs[tensorboard])
    tensorboard: bool = setting(False, resumable=True, free=True,
                                help="Also write TensorBoard event files into RUN_DIR/tb (pip install "
                                     "'catsdogs[tensorboard]').")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def declared_settings() -> dict[str, Setting]:
    """Each TrainConfig field's Setting by name, in field order, with its name, type and default filled in."""
    hints = _field_types()
    found = {}
    for field in dataclasses.fields(TrainConfig):
        kinds, nullable = _allowed(hints[field.name])
        declared = field.metadata.get(_SETTING, Setting())
        found[field.name] = dataclasses.replace(declared, name=field.name, kind=kinds[0], nullable=nullable,
                                                default=field.default)
    return found


def settings_with(role: str) -> tuple[str, ...]:
    """The names of the settings that have `role` (one of ROLES), in field order."""
    if role not in ROLES:
        raise ValueError(f"unknown setting role {role!r}; roles: {', '.join(ROLES)}")
    return tuple(name for name, declared in declared_settings().items() if getattr(declared, role))


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
    declared = declared_settings()
    if key not in declared:
        valid = ", ".join(sorted(declared))
        raise CatsdogsError(f"{source}: unknown key {key!r}; valid keys: {valid}")
    kind, choices = declared[key].kind, declared[key].choices
    if value is None:
        if declared[key].nullable:
            return None
        raise CatsdogsError(f"{source}: {key} must not be empty")
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise CatsdogsError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    if isinstance(value, str) and not value.strip():  # --pretrained "$UNSET" must not mean "none"
        raise CatsdogsError(f"{source}: {key} must not be empty")
    if isinstance(value, float) and not math.isfinite(value):
        raise CatsdogsError(f"{source}: {key} must be a finite number, got {value!r}")
    if choices and value not in choices:
        raise CatsdogsError(f"{source}: {key} must be one of {', '.join(choices)}, got {value!r}")
    return _check_bounds(declared[key], value, source)


def _check_bounds(declared: Setting, value: Any, source: str) -> Any:
    """Return `value` if it is within the bounds `declared` gives, else raise naming the source, key and bound."""
    key = declared.name
    if declared.minimum is not None and value < declared.minimum:
        raise CatsdogsError(f"{source}: {key} must be at least {declared.minimum:g}"
                            + (" (0: off)" if declared.off_at_zero else "") + f", got {value!r}")
    if declared.maximum is not None and value > declared.maximum:
        raise CatsdogsError(f"{source}: {key} must be at most {declared.maximum:g}, got {value!r}")
    if declared.above_zero and value <= 0:
        raise CatsdogsError(f"{source}: {key} must be above 0, got {value!r}")
    if declared.below_one and value >= 1:
        raise CatsdogsError(f"{source}: {key} must be {declared.below_one}, got {value!r}")
    if declared.probability and value > 1:
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


__all__ = ["ROLES", "Setting", "TrainConfig", "build_config", "check_value", "config_from_dict",
           "config_to_yaml", "declared_settings", "read_yaml_overrides", "setting", "settings_with"]

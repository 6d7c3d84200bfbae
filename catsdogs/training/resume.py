"""What a run saves to continue exactly, and the checks that a resume continues the same run."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from catsdogs.data.cache import ImageSplit, split_fingerprint
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.training.checkpoint import SavedModel
from catsdogs.training.config import TrainConfig, config_from_dict, settings_with
from catsdogs.training.distributed import SOLO, Team
from catsdogs.training.runs import RunFolder
from catsdogs.training.schedules import depends_on_length
from catsdogs.training.state import Progress, TrainState


def resumed_config(state: Mapping[str, Any], flags: Mapping[str, Any], run_dir: Path) -> TrainConfig:
    saved = config_from_dict(state["config"], f"{RunFolder(run_dir).last_path}")
    changes, resumable = {}, settings_with("resumable")  # the rest must match the checkpoint
    for key, value in flags.items():
        if value is None or value == getattr(saved, key):
            continue
        if key not in resumable:
            raise UsageError(f"--{key.replace('_', '-')} {value} conflicts with the run being resumed "
                             f"({key} = {getattr(saved, key)}); a resumed run keeps the {key.replace('_', ' ')} "
                             "it started with (train a new run to change it)")
        # `data` may move: the resume then checks that the folder holds the same split (data_fingerprint).
        changes[key] = str(Path(value).resolve()) if key == "data" else value
    if "epochs" in changes and changes["epochs"] < state["progress"]["epoch"]:
        raise UsageError(f"--epochs {changes['epochs']} is fewer than the {state['progress']['epoch']} "
                         "epochs already done")
    _check_same_length(saved, changes, state["progress"], run_dir)
    return dataclasses.replace(saved, **changes)


def budget_spent(history: list[Mapping[str, Any]], *budgets: float | None) -> bool:
    """Whether the training time of the epochs in `history` reached any of `budgets` (minutes; 0 or None: none)."""
    spent = sum(row["seconds"] for row in history)
    return any(bool(budget) and spent >= budget * 60 for budget in budgets)


def planned_over_length(cfg: TrainConfig) -> list[str]:
    """What of `cfg` is planned over the run's length (its epochs, or what its time budget allows): the lr
    schedule unless it is flat, and progressive resizing, which switches to full size at a fraction of it."""
    planned = [f"its {cfg.scheduler} schedule"] if depends_on_length(cfg.scheduler) else []
    if cfg.progressive_size and cfg.progressive_fraction > 0:
        planned.append("progressive resizing")
    return planned


def _check_same_length(saved: TrainConfig, changes: Mapping[str, Any], progress: Mapping[str, Any],
                       run_dir: Path) -> None:
    """Refuse a new --epochs or --time-budget for a run whose plan spans its length: the steps still to come
    would follow another plan than those done (a finished onecycle run, extended, would raise its lr again
    and go back to small images). A run that ended for good (early stop, spent budget) is left to say so."""
    changed = [key for key in ("epochs", "time_budget") if key in changes and changes[key] != getattr(saved, key)
               and (changes[key] or getattr(saved, key))]  # 0 and None are both no budget
    planned = planned_over_length(saved)
    ended = progress.get("stopped_early") or budget_spent(progress["history"], saved.time_budget)
    if not changed or not planned or ended:
        return
    key = changed[0]
    option = f"--{key.replace('_', '-')}"
    asked = f"{option} {changes[key] or 0:g}"
    length = f"{saved.epochs} epochs" + (f" and {saved.time_budget:g}-minute time budget" if saved.time_budget else "")
    moves = " and ".join(["lr"] * depends_on_length(saved.scheduler)
                         + ["image size"] * ("progressive resizing" in planned))
    anew = _new_run(run_dir, asked)
    if progress["epoch"] < saved.epochs:
        anew = f"resume without {option} to finish it as planned, or {anew}"
    raise UsageError(f"{asked} conflicts with the run being resumed: {run_dir} plans {' and '.join(planned)} over its "
                     f"{length}, and a new length would make its {moves} jump part-way; {anew}")


def how_to_train_longer(cfg: TrainConfig, run_dir: Path) -> str:
    """What to do to train a finished run longer: raise --epochs, unless its plan spans its length."""
    planned = planned_over_length(cfg)
    return f"{_new_run(run_dir, '--epochs N')} ({' and '.join(planned)} cannot be extended)" if planned else \
        "raise --epochs"


def _new_run(run_dir: Path, asked: str) -> str:
    settings = shlex.quote(str(RunFolder(run_dir).config_path))
    return f"start a new run with its settings: catsdogs train --config {settings} {asked}"


def resume_command(run_dir: Path, team: Team) -> str:
    if team.enabled:  # an exact resume needs as many processes again
        return (f"torchrun --standalone --nproc_per_node={team.world} -m catsdogs train --resume "
                f"{shlex.quote(str(run_dir))}")
    return f"catsdogs train --resume {shlex.quote(str(run_dir))}"


def point_best_at(run_dir: Path, data: str) -> None:
    """After a resume with a moved split, best.pt (which evaluate reads) names the new folder too."""
    folder = RunFolder(run_dir)
    if folder.best_path.is_file():
        state = folder.load("best")
        if state["config"].get("data") != data:
            state["config"]["data"] = data
            folder.save("best", state)


def model_state(cfg: TrainConfig, model: nn.Module, progress: Progress, identity: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """Weights and what they mean: config, classes, epoch, and `identity` (init hash, data fingerprint)."""
    return SavedModel(weights={k: v.detach().cpu() for k, v in model.state_dict().items()}, config=cfg.to_dict(),
                      classes=list(identity["classes"]), epoch=progress.epoch,
                      val_acc=progress.history[-1]["val_acc"] if progress.history else None,
                      init_hash=identity.get("init_hash"), data_fingerprint=identity.get("data_fingerprint")).to_state()


def data_fingerprint(train_split: ImageSplit, val_split: ImageSplit) -> dict[str, str]:
    """A hash of the train and val file lists (names, classes, sizes). The test split is never read
    in training, not even its names: a learning-rate sweep must provably not touch it."""
    return {"train": split_fingerprint(train_split), "val": split_fingerprint(val_split)}


def check_same_split(state: Mapping[str, Any], fingerprint: Mapping[str, Any], data: str, run_dir: Path) -> None:
    saved = state.get("data_fingerprint")
    if saved and (saved["train"], saved["val"]) != (fingerprint["train"], fingerprint["val"]):
        raise CatsdogsError(f"{data} does not hold the split {run_dir} started on (re-split since?); going on "
                            "would train on photos its test set may now hold: start a new run instead")


@dataclass
class LastSaver:
    """Writes last.pt: `state` (everything a resume needs to continue exactly) with the weights' meaning."""

    run_dir: Path
    cfg: TrainConfig
    state: TrainState
    identity: Mapping[str, Any]  # classes, init_hash, data_fingerprint
    team: Team = SOLO
    after_save: Sequence[Callable[[Progress], None]] = ()  # each told once last.pt is written (see Hooks)

    def __call__(self) -> None:
        training = self.state.state_dict(self.team)  # every process takes part: each has its own random streams
        if training is not None:
            progress = self.state.progress
            RunFolder(self.run_dir).save("last", {**model_state(self.cfg, self.state.kept_model, progress,
                                                                self.identity), **training})
        for hook in self.after_save:
            hook(self.state.progress)

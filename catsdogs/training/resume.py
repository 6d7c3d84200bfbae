"""What a run saves to continue exactly, and the checks that a resume continues the same run."""

from __future__ import annotations

import dataclasses
import random
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from catsdogs.data.cache import ImageSplit, split_fingerprint
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.training.checkpoint import SavedModel
from catsdogs.training.config import TrainConfig, config_from_dict
from catsdogs.training.distributed import SOLO, Team, gather
from catsdogs.training.loop import EpochLoop, Log, Progress
from catsdogs.training.runs import RunFolder

# Settings a resumed run may change; everything else must match the checkpoint.
# `data` may move: the resume then checks that the folder holds the same split (data_fingerprint).
RESUMABLE_CHANGES = ("epochs", "device", "workers", "cache", "patience", "precision", "time_budget", "data",
                     "micro_batch", "tensorboard")
# Seeds of process r's augmentation and dropout streams are offset by r times this.
RANK_SEED_STRIDE = 1_000_003


def rng_state() -> dict[str, Any]:
    """Global random states as plain values, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    # Dropout on a GPU draws from the GPU's own generator, which torch.get_rng_state() leaves out.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    elif torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() saved; an accelerator's state only where that accelerator is used now."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def resumed_config(state: Mapping[str, Any], flags: Mapping[str, Any], run_dir: Path) -> TrainConfig:
    saved = config_from_dict(state["config"], f"{RunFolder(run_dir).last_path}")
    changes = {}
    for key, value in flags.items():
        if value is None or value == getattr(saved, key):
            continue
        if key not in RESUMABLE_CHANGES:
            raise UsageError(f"--{key.replace('_', '-')} {value} conflicts with the run being resumed "
                             f"({key} = {getattr(saved, key)}); a resumed run keeps the {key.replace('_', ' ')} "
                             "it started with (train a new run to change it)")
        changes[key] = str(Path(value).resolve()) if key == "data" else value
    if "epochs" in changes and changes["epochs"] < state["progress"]["epoch"]:
        raise UsageError(f"--epochs {changes['epochs']} is fewer than the {state['progress']['epoch']} "
                         "epochs already done")
    return dataclasses.replace(saved, **changes)


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


def restore_progress(state: Mapping[str, Any]) -> Progress:
    saved = dict(state["progress"])
    saved["sums"] = tuple(saved["sums"])
    saved.pop("best_val_acc", None)  # kept by older catsdogs; the best epoch is read off the history now
    return Progress(**saved)


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
    """Writes last.pt: everything a resume needs to continue exactly where training stood."""

    run_dir: Path
    cfg: TrainConfig
    loop: EpochLoop
    identity: Mapping[str, Any]  # classes, init_hash, data_fingerprint
    team: Team = SOLO

    def __call__(self, progress: Progress) -> None:
        loop = self.loop
        # Every process draws its own augmentations and dropout masks; all of them are kept.
        ranks = gather({"aug_gen": loop.aug_gen.get_state(), "rng": rng_state()}, self.team)
        if not self.team.main:
            return
        state = model_state(self.cfg, loop.kept_model, progress, self.identity)
        if loop.ema is not None:  # "model" holds the averaged weights to use; a resume continues from raw_model
            state["raw_model"] = {k: v.detach().cpu() for k, v in loop.model.state_dict().items()}
            state["ema"] = loop.ema.state_dict()
        state.update({
            "optimizer": loop.optimizer.state_dict(),
            "scaler": loop.scaler.state_dict() if loop.scaler.is_enabled() else {},
            "order_gen": loop.order_gen.get_state(), "aug_gen": ranks[0]["aug_gen"], "rng": ranks[0]["rng"],
            "progress": dataclasses.asdict(progress),
        })
        if self.team.enabled:
            state["ranks"] = ranks
        RunFolder(self.run_dir).save("last", state)


def restore_process_randomness(state: Mapping[str, Any], team: Team, aug_gen: torch.Generator, log: Log) -> None:
    """Give this process back its own generator states; exact only with as many processes as before."""
    ranks = state.get("ranks") or [{"aug_gen": state["aug_gen"], "rng": state["rng"]}]
    if len(ranks) == team.world:
        aug_gen.set_state(ranks[team.rank]["aug_gen"])
        set_rng_state(ranks[team.rank]["rng"])
        return
    log(f"note: this run was saved by {len(ranks)} process(es) and continues on {team.world}: it goes on from "
        "the same weights and step, but its augmentations differ from an uninterrupted run's")
    set_rng_state(ranks[0]["rng"])
    step = int(state["progress"]["global_step"])
    aug_gen.manual_seed(int(state["config"]["seed"]) + 1 + RANK_SEED_STRIDE * team.rank + step)
    if team.enabled:
        torch.manual_seed(int(state["config"]["seed"]) + RANK_SEED_STRIDE * team.rank + step)

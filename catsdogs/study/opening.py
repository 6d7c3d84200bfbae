"""The study folder's opening: start a study, continue one made with the same arguments, or grow it.

A study grows in three ways without redoing a finished run: more seeds (the report's advice on ties),
more epochs where nothing in a run's plan spans its length (a constant learning rate, no progressive
resizing), and more tuning seeds. With more epochs a run that reached the old epoch count continues from its
last.pt, which is the same as training the new count from the start (resume is exact), and a run that
stopped early stays stopped, as a straight run of the new length would have. With more tuning seeds the
sweep adds its runs, and a study run whose chosen learning rate changed trains again (study_run.py). Another
--tune-rule chooses again from the same tuning runs, and so trains again only the study runs whose rate changed.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from catsdogs import __version__
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.study.layout import STUDY_FILE, StudyFolder
from catsdogs.training.config import TrainConfig, settings_with
from catsdogs.training.resume import planned_over_length

Log = Callable[[str], None]


def study_identity(optims: list[str], seeds: list[int], budget: str, tune_lr: bool,
                   base: TrainConfig, tune_seeds: int = 1, lrs: dict[str, float] | None = None,
                   tune_rule: str = "best") -> dict[str, Any]:
    """What makes a study this study: study.json holds it, and a re-run must match it (or grow it)."""
    shared = settings_with("shared")  # not per run, and not free (how fast runs go or what they log)
    config = {k: v for k, v in base.to_dict().items() if k in shared}
    return {"optims": list(optims), "seeds": seeds, "budget": budget, "tune_lr": tune_lr, "tune_seeds": tune_seeds,
            "tune_rule": tune_rule, "lrs": dict(lrs or {}), "config": config}


def can_add_epochs(cfg: TrainConfig) -> bool:
    """Whether a finished run of `cfg` can be given more epochs and still equal a straight run of them."""
    return not planned_over_length(cfg)


def epochs_grow(saved: Mapping[str, Any], wanted: TrainConfig) -> bool:
    """Whether a run folder's saved config differs from `wanted` by fewer epochs that may be raised."""
    epochs = saved.get("epochs")
    return isinstance(epochs, int) and epochs < wanted.epochs and can_add_epochs(wanted)


def open_study(out: Path, identity: dict[str, Any], base: TrainConfig, force: bool, log: Log) -> None:
    """Start a study folder, or continue one made with the same arguments, or grow it (more seeds, more
    epochs); --force starts afresh."""
    folder = StudyFolder(out)
    if out.exists() and any(out.iterdir()):
        if not folder.study_path.is_file():
            raise CatsdogsError(f"{out} exists and is not a catsdogs study (no {STUDY_FILE}); choose another --out")
        if not force:
            _continue_study(out, identity, base, log)
            return
        log(f"--force: deleting the study in {out} and starting again")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    folder.write_study({**identity, "catsdogs": __version__})


def _continue_study(out: Path, identity: dict[str, Any], base: TrainConfig, log: Log) -> None:
    """Continue the study in `out`, growing study.json where the command asks for more; refuse any other change."""
    folder = StudyFolder(out)
    saved = folder.read_study()
    grown, growth = _grown(saved, identity, base)
    # Any change but the seeds first: a change of seeds is named only when nothing else changed.
    change = _first_change({**grown, "seeds": identity["seeds"]}, identity) or _first_change(grown, identity)
    if change:
        key, old, new = change
        why = ""
        if key == "epochs" and isinstance(old, int) and new > old:
            why = f" (more epochs cannot continue its runs: {' and '.join(planned_over_length(base))} span them)"
        raise UsageError(f"{out} holds a study made with {key} = {_show(old)}, but this command asks for "
                         f"{key} = {_show(new)}{why}; repeat its arguments to continue it, give this one "
                         f"another --out (e.g. --out {shlex.quote(out.name + '-2')}), or add --force to "
                         "delete it and start again")
    if growth:
        log(f"extending the study in {out} {' and '.join(growth)}")
        folder.write_study(grown)
    else:
        log(f"continuing the study in {out}")


def _grown(saved: dict[str, Any], identity: dict[str, Any], base: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """study.json as the command grows it (more seeds, more epochs), and a phrase for each growth."""
    grown, growth = dict(saved), []
    old_seeds, new_seeds = saved.get("seeds") or [], identity["seeds"]
    if len(new_seeds) > len(old_seeds) and new_seeds[:len(old_seeds)] == old_seeds:
        grown["seeds"] = new_seeds
        growth.append(f"from {len(old_seeds)} to {len(new_seeds)} seeds (adding {_show(new_seeds[len(old_seeds):])}; "
                      "finished runs are kept)")
    old_tune, new_tune = saved.get("tune_seeds", 1), identity["tune_seeds"]
    if saved.get("tune_lr") and identity["tune_lr"] and new_tune > old_tune:
        grown["tune_seeds"] = new_tune
        growth.append(f"from {old_tune} to {new_tune} tuning seeds (finished tuning runs are kept; a study run "
                      "whose learning rate changes trains again)")
    old_rule, new_rule = saved.get("tune_rule", "best"), identity["tune_rule"]
    if saved.get("tune_lr") and identity["tune_lr"] and new_rule != old_rule:
        grown["tune_rule"] = new_rule
        growth.append(f"to choose its learning rates by --tune-rule {new_rule}, not {old_rule} (tuning runs are "
                      "kept; a study run whose learning rate changes trains again)")
    old_epochs, new_epochs = (saved.get("config") or {}).get("epochs"), identity["config"].get("epochs")
    if (saved.get("budget") == identity["budget"] == "epochs" and isinstance(old_epochs, int)
            and isinstance(new_epochs, int) and new_epochs > old_epochs and can_add_epochs(base)):
        grown["config"] = {**saved["config"], "epochs": new_epochs}
        growth.append(f"from {old_epochs} to {new_epochs} epochs (runs that reached {old_epochs} continue from "
                      "their last.pt; runs that stopped early stay stopped)")
    return grown, growth


def _first_change(saved: dict[str, Any], wanted: dict[str, Any]) -> tuple[str, Any, Any] | None:
    defaults = TrainConfig().to_dict()  # a key added to TrainConfig after the study counts as its default
    if sorted(saved.get("optims") or []) != sorted(wanted["optims"]):  # their order is only the listing's
        return "optims", saved.get("optims"), wanted["optims"]
    before = {"tune_seeds": 1, "tune_rule": "best", "lrs": {}}  # what a study made before these options had
    for key in ("seeds", "budget", "tune_lr", "tune_seeds", "tune_rule", "lrs"):
        old = saved.get(key, before.get(key))
        if old != wanted[key]:
            return key, old, wanted[key]
    for key, value in wanted["config"].items():
        if saved.get("config", {}).get(key, defaults.get(key)) != value:
            return key, saved["config"].get(key, defaults.get(key)), value
    return None


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)

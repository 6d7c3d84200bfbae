"""What a study's report advises next, read off its results: more seeds, more epochs, tuning, equal time."""

from __future__ import annotations

import dataclasses

from catsdogs.study.layout import Summary
from catsdogs.study.opening import can_add_epochs
from catsdogs.study.stats import PairedTest, percent
from catsdogs.training.config import TrainConfig

LATE = 0.2  # a best epoch in the last fifth of a run that reached its cap: it was still improving


def next_steps(summary: Summary) -> list[str]:
    """What would make this answer firmer, read off the results."""
    rows, n, steps = summary.ranking, len(summary.seeds), []
    tests = [c.test for c in summary.adjacent if c.test]
    undecided = any(t.cannot_tell for t in tests)
    if n == 1 or undecided or (n < 5 and not all(c.distinguishable for c in summary.adjacent)):
        steps.append(f"Run more seeds (`--seeds {max(5, n + 2)}`): {_spread_note(tests, n)}")
    else:
        steps += _seeds_for_ties(summary, n)
    if all(r.epochs_to_target.reached == 0 for r in rows):
        steps.append(f"No run reached {percent(summary.target_val_acc, 0)} validation accuracy: train longer "
                     "(`--epochs`, or `--budget seconds:S`) before trusting the ranking.")
    defaults = [o for o, h in summary.hyperparameters.items() if h.lr_from == "optimizer default"]
    if not summary.tune_lr and defaults:
        one = len(defaults) == 1
        who = ("Every optimizer used its default learning rate" if len(defaults) == len(summary.hyperparameters)
               else f"{', '.join(defaults)} kept {'its' if one else 'their'} default learning rate{'' if one else 's'}")
        steps.append(f"{who}: `--tune-lr` compares each at its best, picked on validation accuracy only.")
    steps += _safer_rates(summary)
    steps += _still_improving(summary)
    paces = sorted(rows, key=lambda r: r.epoch_seconds.mean)
    slow, fast = paces[-1].epoch_seconds, paces[0].epoch_seconds
    ratio = slow.mean / max(fast.mean, 1e-9)
    # Only a gap every seed shows: the slowest seed of the fast one is faster than the fastest of the slow one.
    if summary.budget == "epochs" and len(rows) > 1 and ratio > 1.5 and max(fast.values) < min(slow.values):
        steps.append(f"At equal epochs {paces[-1].optim} took {ratio:.1f}× the time per epoch of "
                     f"{paces[0].optim} (median epochs, every seed); `--budget seconds:S` compares them at "
                     "equal time.")
    return steps


def _seeds_for_ties(summary: Summary, n: int) -> list[str]:
    """The fewest seeds that would settle a tie between neighbours, as the report estimates them, and the
    ties they would leave."""
    ties = [c for c in summary.adjacent if not c.distinguishable and c.seeds_needed and c.seeds_needed > n]
    if not ties:
        return []
    fewest = min(c.seeds_needed for c in ties)
    settled = [f"{c.better} vs {c.worse}" for c in ties if c.seeds_needed == fewest]
    left = [f"{c.better} vs {c.worse} would need {c.seeds_needed}" for c in ties if c.seeds_needed > fewest]
    rest = f" ({'; '.join(left)})" if left else ""
    return [f"`--seeds {fewest}` extends this study (its finished runs are kept) to the seeds that would tell "
            f"{' and '.join(settled)} apart at the gap and spread seen{rest}."]


def _safer_rates(summary: Summary) -> list[str]:
    """Where runs never trained at the rates the sweep chose: a step of margin (--tune-rule stable) from the same
    tuning runs, and, where even that failed after a one-seed sweep, more tuning seeds."""
    failed = ", ".join(r.optim for r in summary.ranking if r.untrained_seeds)
    sweep = summary.sweep
    if not failed or sweep is None:
        return []
    if sweep.rule != "stable":
        return [f"Some runs of {failed} never trained at the rate the sweep chose: `--tune-rule stable` chooses "
                "again from the same tuning runs, the best rate with a step of margin below any rate where a "
                "tuning seed failed (study runs whose rate changes train again)."]
    if len(sweep.seeds) == 1:
        return [f"Some runs of {failed} never trained, even with a step of margin: `--tune-seeds 3` extends "
                "this study to see each rate on three seeds, so a rate that fails on some starts is seen to (its "
                "tuning runs are kept; study runs whose rate changes train again)."]
    return []


def _spread_note(tests: list[PairedTest], n: int) -> str:
    """How uncertain the gaps between neighbours are, in words that fit a zero spread too."""
    if not tests:
        return "one seed gives no uncertainty at all."
    width = 100 * max((t.ci95[1] - t.ci95[0]) / 2 for t in tests)
    if width == 0:
        return (f"every seed gave the same gap between each pair of neighbours (no spread across seeds), and {n} "
                "seeds are too few to show that other seeds would too.")
    points = f"{width:.0f}" if width >= 1 else f"{width:.1g}"
    return f"with {n} seeds the 95% intervals of the gaps between neighbours reach ±{points} points."


def _still_improving(summary: Summary) -> list[str]:
    """Where most runs of an optimizer reached the epoch cap with their best epoch near its end: more epochs,
    which grow the study (its runs continue) where nothing in a run's plan spans its length."""
    cap = summary.shared_settings.get("epochs")
    if summary.budget != "epochs" or not isinstance(cap, int):
        return []
    late = {}
    for optim in summary.optims:
        runs = [r for r in summary.runs if r.optim == optim]
        rising = [r for r in runs if r.status == "finished" and r.epochs == cap and r.best_epoch > cap * (1 - LATE)]
        if runs and 2 * len(rising) > len(runs):
            late[optim] = f"{optim} ({len(rising)} of {len(runs)} runs)"
    if not late:
        return []
    # The settings the runs shared (older summaries lack some: they take the defaults), as `compare` judges them.
    known = {k: v for k, v in summary.shared_settings.items() if k in TrainConfig.__dataclass_fields__}
    how = ("grows this study: the runs that reached the cap continue from their last.pt"
           if can_add_epochs(dataclasses.replace(TrainConfig(), **known)) else
           "needs a new study (`--out`): its schedule spans the epochs, so runs cannot continue")
    return [f"Still improving at the {cap}-epoch cap (best epoch in its last fifth): {', '.join(late.values())}. "
            f"`--epochs {2 * cap}` {how}."]

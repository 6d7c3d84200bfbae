"""catsdogs.study.report and report_text: report.md's wording, read off hand-made study folders (no training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from catsdogs.study.advice import next_steps
from catsdogs.study.layout import TuningRecord, run_name
from catsdogs.study.report import reach_target, summarize
from catsdogs.study.report_text import format_report
from tests.helpers import HISTORY, HISTORY_HEADER, write_study



def report_for(root: Path, accuracies: dict[str, list[float]], tune_lr: bool = False) -> tuple[dict, str]:
    summary = summarize(write_study(root, accuracies, tune_lr), target_acc=0.7)
    return summary.to_dict(), format_report(summary)


def ranking_line(report: str) -> str:
    (line,) = [line for line in report.splitlines() if line.startswith("**Ranking by mean test accuracy")]
    return line.split(":** ", 1)[1]


def test_equal_means_are_shown_as_ties(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {name: [0.5, 0.5, 0.5] for name in ("vanilla-sgd", "minibatch-sgd", "adam")})
    assert [row["rank"] for row in summary["ranking"]] == [1, 1, 1]
    assert ranking_line(report) == ("vanilla-sgd (50.0 ± 0.0%) = minibatch-sgd (50.0 ± 0.0%) = adam (50.0 ± 0.0%). "
                                    "(= equal means)")


def test_only_a_gap_the_paired_test_tells_apart_gets_a_greater_than(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {"minibatch-sgd": [0.5, 0.55, 0.5], "adam": [0.9, 0.95, 0.9],
                                            "momentum": [0.55, 0.5, 0.55]})
    assert [(c["better"], c["worse"], c["distinguishable"]) for c in summary["adjacent"]] == [
        ("adam", "momentum", True), ("momentum", "minibatch-sgd", False)]
    assert ranking_line(report) == ("adam (91.7 ± 2.9%) > momentum (53.3 ± 2.9%) ≈ minibatch-sgd (51.7 ± 2.9%). "
                                    "(≈ a gap the seeds cannot tell apart, Holm p ≥ 0.05)")
    # p 0.0075 and 0.67 over a family of two: Holm doubles the smaller and keeps the larger
    first, second = summary["adjacent"]
    assert first["p_holm"] == pytest.approx(2 * first["test"]["p"]) and first["p_holm"] < 0.05
    assert second["p_holm"] == pytest.approx(second["test"]["p"])
    # the tie: gaps +5, -5, +5 points (mean 1.67, sd 5.77), at Holm's level for the larger p of two (0.05 / 1):
    # the smallest n with n >= ((t(n - 1; 0.975) + t(n - 1; 0.8)) * 5.7735 / 1.6667)^2, Student's t: 97
    # (n = 97: 96.1 <= 97; n = 96: 96.1 > 96)
    assert first["seeds_needed"] is None and second["seeds_needed"] == 97 and second["holm_level"] == 0.05
    assert ("**Seeds to tell the remaining ties apart** (at the gap and paired spread these seeds show, 80% power, "
            "Holm's level): momentum vs minibatch-sgd 97.") in report
    assert "| 0.667 | 0.667 | not distinguishable | 97 |" in report


def test_one_seed_orders_different_means_and_ties_equal_ones(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {"momentum": [0.5], "adam": [0.9], "minibatch-sgd": [0.5]})
    assert ranking_line(report) == "adam (90.0%) > momentum (50.0%) = minibatch-sgd (50.0%). (= equal means)"
    assert [(row["optim"], row["rank"]) for row in summary["ranking"]] == [("adam", 1), ("momentum", 2),
                                                                           ("minibatch-sgd", 2)]
    assert "| 2 | minibatch-sgd |" in report


def test_a_gap_without_spread_across_seeds_is_said_plainly(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {"adam": [0.6, 0.6, 0.6], "momentum": [0.5, 0.5, 0.5],
                                      "minibatch-sgd": [0.5, 0.5, 0.5]})
    assert "±0 points" not in report and "+0.0 to +0.0 pp" not in report and "+10.0 to +10.0 pp" not in report
    assert ("- Run more seeds (`--seeds 5`): every seed gave the same gap between each pair of neighbours (no spread "
            "across seeds), and 3 seeds are too few to show that other seeds would too.") in report
    # The same 10-point gap on 3 seeds once read "p < 0.001, distinguishable": no spread proves nothing.
    no_spread = ("cannot tell with 3 seeds: every seed gave the same gap, which leaves no spread to test it "
                 "against, so run more seeds")
    assert (f"| adam vs momentum | +10.0 pp | none: the same gap on every seed | 3 of 3 seeds | — | — | — | "
            f"{no_spread} | — (no spread across seeds to size from) |") in report
    assert (f"| momentum vs minibatch-sgd | +0.0 pp | none: the same gap on every seed | 0 of 3 seeds | — | — | "
            f"— | {no_spread} | no gap observed |") in report
    assert [c["distinguishable"] for c in summary["adjacent"]] == [False, False]
    assert ranking_line(report).startswith("adam (60.0 ± 0.0%) ≈ momentum (50.0 ± 0.0%) = minibatch-sgd")
    assert "(paired t-test, Holm p < 0.05): none." in report


def test_two_seeds_call_no_gap_distinguishable_however_large(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {"adam": [0.9, 0.95], "momentum": [0.5, 0.5]})
    # gaps +40 and +45 points: t = 42.5 / (3.54 / sqrt(2)) = 17, p = 1 - (2 / pi) * atan(17) = 0.037 < 0.05,
    # interval 42.5 ± 12.706 * 2.5 = 42.5 ± 31.8 points
    (pair,) = summary["adjacent"]
    assert pair["test"]["p"] == pytest.approx(0.0374, abs=1e-4) and pair["distinguishable"] is False
    # one comparison: Holm leaves its p as it is; at this gap and spread 3 seeds (the least) would tell it apart
    assert ("| adam vs momentum | +42.5 pp | +10.7 to +74.3 pp | 2 of 2 seeds | 17.00 | 0.037 | 0.037 | cannot tell "
            "with 2 seeds: a verdict needs 3 or more, so run more seeds | 3 |") in report
    assert ranking_line(report) == ("adam (92.5 ± 3.5%) ≈ momentum (50.0 ± 0.0%). (≈ a gap the seeds cannot tell "
                                    "apart: Holm p ≥ 0.05, fewer than 3 seeds or no spread across them)")
    assert "- Run more seeds (`--seeds 5`)" in report


def test_a_spread_gap_still_reports_its_interval(tmp_path: Path) -> None:
    _, report = report_for(tmp_path, {"adam": [0.6, 0.5, 0.6], "momentum": [0.5, 0.55, 0.5]})
    # gaps +10, -5, +10 points: mean 5, sd 8.66, half-width t(0.975, 2) * 8.66 / sqrt(3) = 4.303 * 5 = 21.5
    assert "with 3 seeds the 95% intervals of the gaps between neighbours reach ±22 points." in report
    assert "| adam vs momentum | +5.0 pp | -16.5 to +26.5 pp | 2 of 3 seeds | 1.00 |" in report



def test_many_seeds_without_spread_still_ask_for_more_seeds(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {"adam": [0.6] * 5, "momentum": [0.5] * 5})
    assert summary["adjacent"][0]["distinguishable"] is False
    assert "cannot tell with 5 seeds: every seed gave the same gap" in report
    assert "- Run more seeds (`--seeds 7`): every seed gave the same gap between each pair of neighbours" in report

@pytest.mark.parametrize("tune_lr", [False, True])
def test_learning_rate_advice_follows_whether_the_study_tuned_it(tmp_path: Path, tune_lr: bool) -> None:
    summary, report = report_for(tmp_path, {"adam": [0.5, 0.55], "momentum": [0.5, 0.5]}, tune_lr=tune_lr)
    assert summary["tune_lr"] is tune_lr
    warning = next(line for line in report.splitlines() if line.startswith("**Warning:**"))
    assert warning.startswith("**Warning:** adam, momentum stayed within 5 points of chance (50.0%")
    assert ("tune the learning rate (`--tune-lr`)" in warning) is not tune_lr
    assert ("this study already tuned the learning rates (`--tune-lr`)" in warning) is tune_lr
    assert ("Every optimizer used its default learning rate: `--tune-lr`" in report) is not tune_lr


def epoch_seconds(study: Path, optim: str, seed: int, seconds: list[float]) -> None:
    rows = [f"{e},0.69,0.5,0.69,0.5,0.01,{s}" for e, s in enumerate(seconds, 1)]
    (study / "runs" / run_name(optim, seed) / "history.csv").write_text(HISTORY.splitlines()[0] + "\n"
                                                                        + "\n".join(rows) + "\n")


def test_time_advice_needs_a_gap_in_the_typical_epoch_on_every_seed(tmp_path: Path) -> None:
    accuracies = {"adam": [0.6, 0.65], "momentum": [0.55, 0.5]}
    study = write_study(tmp_path / "a", accuracies)
    for seed in (42, 43):  # momentum's first epoch was slow (a busy machine); its others match adam's
        epoch_seconds(study, "adam", seed, [2.0, 2.0, 2.0])
        epoch_seconds(study, "momentum", seed, [30.0, 2.1, 2.0])
    summary = summarize(study, target_acc=0.7)
    assert [row.epoch_seconds.values for row in summary.ranking] == [[2.0, 2.0], [2.1, 2.1]]
    assert "At equal epochs" not in format_report(summary)
    study = write_study(tmp_path / "b", accuracies)
    for seed in (42, 43):  # vanilla SGD's one photo a step: slower in every epoch of every seed
        epoch_seconds(study, "adam", seed, [2.0, 2.0, 2.0])
        epoch_seconds(study, "momentum", seed, [9.0, 8.0, 8.5])
    assert ("At equal epochs momentum took 4.2× the time per epoch of adam (median epochs, every seed)"
            in format_report(summarize(study, target_acc=0.7)))


# Epoch 1 answers the larger class: the best plain accuracy, and the worst balanced accuracy.
UNBALANCED_HISTORY = ("epoch,train_loss,train_acc,val_loss,val_acc,val_balanced_acc,lr,seconds\n"
                      "1,0.60,0.70,0.50,0.857,0.500,0.01,2.0\n"
                      "2,0.50,0.75,0.70,0.700,0.725,0.01,2.0\n"
                      "3,0.40,0.80,0.65,0.690,0.740,0.01,2.0\n")


@pytest.mark.parametrize(("class_weights", "best"), [("balanced", (3, 0.690, 0.740)), ("none", (1, 0.857, 0.500))])
def test_the_report_takes_each_run_s_best_epoch_as_train_chose_it(tmp_path: Path, class_weights: str, best) -> None:
    study = write_study(tmp_path, {"adam": [0.7, 0.7]}, history=UNBALANCED_HISTORY, class_weights=class_weights)
    summary = summarize(study, target_acc=0.7)
    for run in summary.runs:
        assert (run.best_epoch, run.best_val_acc, run.best_val_balanced_acc) == best
    (row,) = summary.ranking
    assert (row.best_val_acc.mean, row.best_val_balanced_acc.mean) == pytest.approx(best[1:])
    report = format_report(summary)
    score = "balanced accuracy" if class_weights == "balanced" else "accuracy"
    assert f"| run | status | epochs | best epoch | its val {score} |" in report
    shown = best[2] if class_weights == "balanced" else best[1]
    assert f"| [runs/adam-seed42](runs/adam-seed42) | finished | 3 | {best[0]} | {100 * shown:.1f}% |" in report
    assert f"best checkpoint (the epoch of highest validation {score}," in report


def test_runs_written_before_balanced_accuracy_was_recorded_are_still_reported(tmp_path: Path) -> None:
    summary, report = report_for(tmp_path, {"adam": [0.6], "momentum": [0.5]})  # HISTORY lacks the column
    assert [(run["best_epoch"], run["best_val_acc"], run["best_val_balanced_acc"]) for run in summary["runs"]] == [
        (1, 0.5, None), (1, 0.5, None)]
    assert summary["ranking"][0]["best_val_balanced_acc"] is None and "| 1 | 50.0% |" in report


def test_time_to_target_counts_epochs_and_the_seconds_up_to_the_epoch_s_end() -> None:
    history = {"epoch": [1.0, 2.0, 3.0], "val_acc": [0.6, 0.72, 0.8], "seconds": [2.0, 3.5, 4.0]}
    assert reach_target(history, 0.7) == (2, 5.5)
    assert reach_target(history, 0.8) == (3, 9.5)
    assert reach_target(history, 0.6) == (1, 2.0)
    assert reach_target(history, 0.81) is None


def test_the_ranking_gives_epochs_and_seconds_to_the_target_beside_test_accuracy(tmp_path: Path) -> None:
    history = HISTORY + "2,0.6,0.6,0.6,0.75,0.01,3.0\n"  # 70% reached in epoch 2, after 2.0 + 3.0 s
    summary = summarize(write_study(tmp_path, {"adam": [0.8, 0.7], "momentum": [0.6, 0.6]}, history=history),
                        target_acc=0.7)
    row = summary.to_dict()["ranking"][0]
    assert row["epochs_to_target"] == {"values": [2, 2], "mean": 2.0, "sd": 0.0, "reached": 2, "of": 2}
    assert row["seconds_to_target"] == {"values": [5.0, 5.0], "mean": 5.0, "sd": 0.0, "reached": 2, "of": 2}
    report = format_report(summary)
    assert ("| rank | optimizer | test accuracy (mean ± sd) | per seed | epochs to val accuracy ≥ 70% | seconds to "
            "it |") in report
    assert "| 1 | adam | 75.0 ± 7.1% | 80.0%, 70.0% | 2.0 ± 0.0 | 5.0 ± 0.0 s |" in report
    unreached = format_report(summarize(tmp_path / "study", target_acc=0.9))
    assert "| 1 | adam | 75.0 ± 7.1% | 80.0%, 70.0% | not reached | — |" in unreached


def test_the_evidence_note_asks_for_5_or_more_seeds_only_below_5(tmp_path: Path) -> None:
    _, three = report_for(tmp_path / "three", {"adam": [0.9, 0.85, 0.9], "momentum": [0.6, 0.55, 0.5]})
    _, five = report_for(tmp_path / "five", {"adam": [0.9, 0.85, 0.9, 0.8, 0.85], "momentum": [0.6, 0.55, 0.5, 0.6, 0.5]})
    assert "More seeds (5 or more) narrow the intervals." in three
    assert "With 5 seeds each paired test has 4 degrees of freedom" in five
    assert "(5 or more)" not in five and "More seeds narrow the intervals." in five


def test_runs_that_never_left_chance_are_named_counted_and_shown_without(tmp_path: Path) -> None:
    trained = HISTORY_HEADER + "1,0.50,0.80,0.50,0.75,0.01,2.0\n"
    study = write_study(tmp_path, {"adam": [0.80, 0.50, 0.78], "momentum": [0.75, 0.74, 0.76]}, history=trained)
    (study / "runs" / run_name("adam", 43) / "history.csv").write_text(HISTORY)  # val 50%: one photo per class
    summary = summarize(study, target_acc=0.7)
    rows = {row.optim: row for row in summary.ranking}
    assert summary.val_chance_acc == 0.5 and rows["adam"].untrained_seeds == [43]
    assert rows["adam"].test_acc_trained.values == [0.80, 0.78] and rows["adam"].test_acc.values == [0.80, 0.50, 0.78]
    assert rows["momentum"].untrained_seeds == [] and rows["momentum"].test_acc_trained is None
    report = format_report(summary)
    assert ("**Runs that never trained:** adam seed 43: validation accuracy never rose more than 1 point above "
            "chance (50.0%, always guessing the larger class).") in report
    assert "Over the runs that trained, test accuracy was adam 79.0 ± 1.4% (2 runs)." in report
    assert "--tune-seeds" not in report  # the study used default rates: the advice is --tune-lr
    one_seed = TuningRecord(factors=[1.0], seed=42, length="1 epoch", chosen={}, rows=[], selected_by="val")
    for sweep in (one_seed, dataclasses.replace(one_seed, seeds=[42, 43])):
        advice = next_steps(dataclasses.replace(summary, sweep=sweep))
        assert any(step.startswith("Some runs of adam never trained at the rate the sweep chose: `--tune-rule "
                                   "stable` chooses again from the same tuning runs") for step in advice)
    stable = dataclasses.replace(one_seed, rule="stable")
    advice = next_steps(dataclasses.replace(summary, sweep=stable))
    assert any(step.startswith("Some runs of adam never trained, even with a step of margin: `--tune-seeds 3`")
               for step in advice) and not any("--tune-rule" in step for step in advice)
    assert not any("never trained" in step for step in
                   next_steps(dataclasses.replace(summary, sweep=dataclasses.replace(stable, seeds=[42, 43]))))
    assert summarize(write_study(tmp_path / "b", {"adam": [0.8, 0.8]}, history=trained), 0.7).ranking[
        0].untrained_seeds == []

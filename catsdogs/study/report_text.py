"""The optimizer study's report as text: report.md and report.html, written from the Summary alone."""

from __future__ import annotations

import math
from pathlib import Path

from catsdogs.inference.webpage import markdown_to_html, page
from catsdogs.study.advice import next_steps
from catsdogs.study.figures import SweepPoint
from catsdogs.study.layout import (LR_SWEEP_FIGURE, TUTORIAL_RANKING, Comparison, RankingRow, Spread, Summary,
                                   ToTarget, TuningRecord, score_name)
from catsdogs.study.stats import ALPHA, MIN_SEEDS, POWER, PairedTest, mean_sd, percent


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _seconds(spread: Spread | ToTarget) -> str:
    return mean_sd(spread, pct=False, digits=1 if spread.mean < 10 else 0) + " s"


def _verdict(comparison: Comparison) -> str:
    test = comparison.test
    if test is None:
        return "no test possible with one seed"
    if test.cannot_tell:
        return test.cannot_tell
    if not comparison.distinguishable:
        return "not distinguishable"
    return (f"distinguishable (Holm p < {ALPHA:g})" if test.mean_diff > 0
            else f"reversed (Holm p < {ALPHA:g})")


def _p_text(test: PairedTest | None) -> str:
    return "—" if test is None else _p_value_text(test.p)


def _p_value_text(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _evidence_note(seeds: int) -> str:
    if seeds < 2:
        return ("With one seed there is no spread to test a gap against: every gap below is a single draw. "
                "Run `--seeds 3` or more before acting on the order.")
    return (f"With {seeds} seeds each paired test has {seeds - 1} degree{'s' if seeds > 2 else ''} of freedom, "
            f"which is weak evidence: only a large gap that repeats on every seed reaches p < {ALPHA:g}, and "
            "'not distinguishable' does not mean equal, only that these seeds cannot tell. The verdicts correct for "
            "making several comparisons at once (Holm's method, below). More seeds"
            f"{' (5 or more)' if seeds < 5 else ''} narrow the intervals.")


def _ranking_text(rows: list[RankingRow], adjacent: list[Comparison]) -> str:
    """'a (..) > b (..) ≈ c (..)', with '>' only where the paired test tells the gap (with one seed: any gap)."""
    text, signs, undecided = f"{rows[0].optim} ({mean_sd(rows[0].test_acc)})", set(), False
    for above, row, pair in zip(rows, rows[1:], adjacent):
        if above.same_mean(row):
            sign = "="
        else:
            sign = "≈" if pair.distinguishable is False else ">"
            undecided |= sign == "≈" and bool(pair.test.cannot_tell)
        signs.add(sign)
        text += f" {sign} {row.optim} ({mean_sd(row.test_acc)})"
    # A "≈" that no p-value decided (too few seeds, no spread) must not read as "p ≥ alpha".
    why = (f": Holm p ≥ {ALPHA:g}, fewer than {MIN_SEEDS} seeds or no spread across them" if undecided
           else f", Holm p ≥ {ALPHA:g}")
    meanings = {"=": "= equal means", "≈": f"≈ a gap the seeds cannot tell apart{why}"}
    legend = [meaning for sign, meaning in meanings.items() if sign in signs]
    return text + "." + (f" ({'; '.join(legend)})" if legend else "")


def _comparison_rows(comparisons: list[Comparison]) -> list[str]:
    lines = ["| comparison | mean gap | 95% interval of the gap | better on | t | p | Holm p | verdict | "
             "seeds to tell it apart |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for item in comparisons:
        test = item.test
        if test is None:
            gap = interval = better_on = t = "—"
        else:
            gap = f"{100 * test.mean_diff:+.1f} pp"
            interval = ("none: the same gap on every seed" if test.sd_diff == 0 else
                        f"{100 * test.ci95[0]:+.1f} to {100 * test.ci95[1]:+.1f} pp")
            better_on = f"{test.wins} of {test.n} seeds"
            t = "—" if test.t is None else f"{test.t:.2f}"
        holm_p = "—" if item.p_holm is None else _p_value_text(item.p_holm)
        lines.append(f"| {item.better} vs {item.worse} | {gap} | {interval} | {better_on} | {t} | "
                     f"{_p_text(test)} | {holm_p} | {_verdict(item)} | {_seeds_needed_text(item)} |")
    return lines


def _seeds_needed_text(item: Comparison) -> str:
    """The seeds-needed cell: a number for an undecided gap with a spread, else why there is none."""
    test = item.test
    if test is None:
        return "— (one seed: no spread to size from)"
    if item.distinguishable:
        return "—"
    if test.mean_diff == 0:
        return "no gap observed"
    if test.sd_diff == 0:
        return "— (no spread across seeds to size from)"
    return str(item.seeds_needed)


def _holm_note(comparisons: list[Comparison]) -> list[str]:
    """How the verdicts and the seeds needed were worked out (nothing when no comparison has a p-value)."""
    m = len([c for c in comparisons if c.p_holm is not None])
    if m == 0:
        return []
    return [f"Holm's step-down method corrects for the {_plural(m, 'comparison')} of this table at once: the k-th "
            f"smallest of the m p-values is multiplied by m − k + 1 (never below the adjusted value before it, "
            f"never above 1), and a gap is called distinguishable when its adjusted p (Holm p) is below {ALPHA:g}, "
            "with at least 3 seeds and a spread across them. Seeds to tell it apart: for a gap left undecided, the "
            f"smallest number of seeds n, at least {MIN_SEEDS}, at which a paired test at the level Holm tests it at "
            f"(α/(m − k + 1)) would tell the observed gap apart with {POWER:.0%} power, if the per-seed differences "
            "spread as they did here (their sd): n ≥ ((t(1 − level/2) + t(power)) × sd / gap)², t being Student's "
            "quantiles at n − 1 degrees of freedom (within a seed of the exact noncentral t). "
            "It assumes the observed gap is the true one, and is a guide, not a promise.",
            ""]


def format_report(summary: Summary) -> str:
    """report.md: the answer first, then the evidence, the figures, the settings and every run."""
    return "\n".join([*_answer_lines(summary), *_ranking_lines(summary), *_figure_lines(summary),
                      *_runs_lines(summary)])


def _answer_lines(summary: Summary) -> list[str]:
    """The ranking in one line, which gaps are real, warnings, next steps, and whether the design is paired."""
    rows, seeds = summary.ranking, summary.seeds
    n = len(seeds)
    order = _ranking_text(rows, summary.adjacent)
    real = [f"{c.better} > {c.worse}" for c in summary.adjacent if c.distinguishable]
    lines = [f"# Optimizer study: {', '.join(summary.optims)}", "",
             f"**Ranking by mean test accuracy over {n} seed{'s' if n > 1 else ''} ({', '.join(map(str, seeds))}):** "
             f"{order}", ""]
    if n > 1:
        lines += [f"**Gaps between neighbours that the seeds can tell apart** (paired t-test, Holm p < {ALPHA:g}): "
                  f"{', '.join(real) if real else 'none'}. {n} seeds are weak evidence: read the tests below "
                  "before acting on the order.", ""]
        needed = [f"{c.better} vs {c.worse} {c.seeds_needed}" for c in summary.adjacent
                  if c.seeds_needed]
        if needed:
            lines += [f"**Seeds to tell the remaining ties apart** (at the gap and paired spread these seeds show, "
                      f"{POWER:.0%} power, Holm's level): {', '.join(needed)}.", ""]
    else:
        lines += [_evidence_note(n), ""]
    stuck = [r.optim for r in rows if r.test_acc.mean < summary.chance_acc + 0.05]
    if stuck:
        they, their = ("it has", "its") if len(stuck) == 1 else ("they have", "their")
        chance = percent(summary.chance_acc)
        lines += [f"**Warning:** {', '.join(stuck)} stayed within 5 points of chance ({chance}, "
                  f"always guessing the larger class): {they} not learned yet in this budget, so {their} place in "
                  "the ranking says little. Train longer (`--epochs`, `--budget seconds:S`)"
                  + ("; this study already tuned the learning rates (`--tune-lr`)."
                     if summary.tune_lr else " or tune the learning rate (`--tune-lr`)."), ""]
    lines += _untrained_lines(summary)
    steps = next_steps(summary)
    if steps:
        lines += ["**Next steps:**", "", *(f"- {step}" for step in steps), ""]
    pairing = summary.pairing
    lines += ["Paired design: " + ("for each seed every optimizer started from the same initial weights "
                                   "(the init hashes below match) and saw the same shuffled order."
                                   if pairing.paired else "**broken: the initial weights differ between "
                                   "optimizers for a seed (see the init hashes under Runs)**; the paired tests "
                                   "below assume they match."), ""]
    return lines


def _untrained_lines(summary: Summary) -> list[str]:
    """The runs that never left chance on validation: named, counted in the means, and the means without them."""
    rows = [r for r in summary.ranking if r.untrained_seeds]
    if not rows or summary.val_chance_acc is None:
        return []
    named = "; ".join(f"{r.optim} seed{'s' if len(r.untrained_seeds) > 1 else ''} "
                      f"{', '.join(map(str, r.untrained_seeds))}" for r in rows)
    others = "; ".join(f"{r.optim} {mean_sd(r.test_acc_trained)} ({_plural(len(r.test_acc_trained.values), 'run')})"
                       for r in rows if r.test_acc_trained is not None)
    return [f"**Runs that never trained:** {named}: validation accuracy never rose more than 1 point above chance "
            f"({percent(summary.val_chance_acc)}, always guessing the larger class). They count in every mean and "
            "test in this report, since each seed was fixed before any run: a start that fails at its rate is part "
            "of that optimizer's result at that rate."
            + (f" Over the runs that trained, test accuracy was {others}." if others else ""), ""]


def _ranking_lines(summary: Summary) -> list[str]:
    """The ranking table, the tests between neighbours, and the tutorial's claims tested."""
    rows, n, target = summary.ranking, len(summary.seeds), summary.target_val_acc
    chosen_by = summary.best_chosen_by
    score = score_name(chosen_by)
    lines = ["## Ranking", "",
             f"| rank | optimizer | test accuracy (mean ± sd) | per seed | epochs to val accuracy ≥ "
             f"{percent(target, 0)} | seconds to it | best val {score} | final train loss | wall time per run | "
             "training images/s |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        epochs, seconds = _target_cells(r)
        lines.append(f"| {r.rank} | {r.optim} | {mean_sd(r.test_acc)} | "
                     f"{', '.join(percent(v) for v in r.test_acc.values)} | {epochs} | {seconds} | "
                     f"{mean_sd(r.best_score(chosen_by))} | "
                     f"{mean_sd(r.final_train_loss, pct=False, digits=3)} | "
                     f"{_seconds(r.wall_seconds)} | "
                     f"{mean_sd(r.images_per_second, pct=False, digits=0)} |")
    lines += ["", f"Test accuracy is that of each run's best checkpoint (the epoch of highest validation {score}, "
              "ties going to the lower validation loss, as `train` chose it) on the test split "
              f"({summary.data.test_images} images), which training and tuning never read. sd is the "
              "standard deviation across seeds. Time to the target: the first epoch whose validation accuracy "
              f"reached {percent(target, 0)} (`--target-acc`), and the seconds of training and validation up to "
              "its end, as mean ± sd over the seeds that reached it (their count when not all did). Wall time "
              "covers training and validation; images/s divides the training images seen by that time.", "",
              "## Are the gaps between neighbours real?", "", *_comparison_rows(summary.adjacent), "",
              "A paired t-test on the per-seed differences in test accuracy: pairing removes the luck of the "
              f"initial weights and data order shared by both runs of a seed. {_evidence_note(n)}", "",
              *_holm_note(summary.adjacent)]
    if summary.tutorial_claims:
        lines += ["## The tutorial's ranking", "",
                  "The tutorial concluded " + " > ".join(TUTORIAL_RANKING) + " from one run each. Its claims, "
                  "tested here (a negative gap means this study found the opposite order):", "",
                  *_comparison_rows(summary.tutorial_claims), ""]
    return lines


def _target_cells(row: RankingRow) -> tuple[str, str]:
    """The ranking's epochs and seconds to the target: mean ± sd over the seeds that reached it."""
    epochs, seconds = row.epochs_to_target, row.seconds_to_target
    if epochs.mean is None:
        return "not reached", "—"
    some = "" if epochs.reached == epochs.of else f" ({epochs.reached} of {epochs.of} seeds)"
    shown_seconds = "—" if seconds is None else _seconds(seconds)
    return mean_sd(epochs, pct=False) + some, shown_seconds


def _figure_lines(summary: Summary) -> list[str]:
    """The figures, and each optimizer's hyperparameters (with the learning-rate sweep when there was one)."""
    figures = summary.figures
    lines = ["## Figures", "", f"![Loss and accuracy per epoch]({figures['curves']})", "",
             "Loss and accuracy per epoch: solid lines validation, dashed lines training; each line is the mean "
             "across seeds and its band the range (lowest to highest seed).", "",
             f"![Test accuracy per optimizer]({figures['test_accuracy']})", "",
             "Test accuracy: bars are the mean across seeds, error bars one standard deviation, dots single seeds.",
             "", "## Hyperparameters", "",
             "| optimizer | learning rate | momentum | batch size | weight decay | learning rate from |",
             "|---|---:|---:|---:|---:|---|"]
    for optim, h in summary.hyperparameters.items():
        cells = ["—" if v is None else f"{v:g}" for v in (h.lr, h.momentum, h.batch_size, h.weight_decay)]
        lines.append(f"| {optim} | {' | '.join(cells)} | {h.lr_from} |")
    if summary.sweep:
        lines += ["", *format_sweep(summary.sweep)]
    return lines


def _runs_lines(summary: Summary) -> list[str]:
    """The setup shared by all runs, and a line for every run."""
    chosen_by = summary.best_chosen_by
    score = score_name(chosen_by)
    lines = ["", "## Setup", "", *_setup_lines(summary), "", "## Runs", "",
             f"| run | status | epochs | best epoch | its val {score} | test accuracy | init hash | wall time |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for run in summary.runs:
        lines.append(f"| [{run.run}]({run.run}) | {run.status} | {run.epochs} | {run.best_epoch} | "
                     f"{percent(run.best_score(chosen_by))} | {percent(run.test_acc)} | `{run.init_hash}` | "
                     f"{run.seconds:.{1 if run.seconds < 10 else 0}f} s |")
    lines += ["", "Re-running the same `catsdogs compare` command skips finished runs, resumes unfinished ones and "
              "rewrites this report; study.json holds the arguments it was made with.", ""]
    return lines


def format_sweep(sweep: TuningRecord) -> list[str]:
    """The sweep's section: the grid and its limit, the budget of a tuning run, each optimizer's effort and
    choice, the figure, and every rate's validation score."""
    chosen_by = sweep.best_chosen_by
    score = score_name(chosen_by)
    grid, optims = sweep.grid, sweep.optims
    stable = sweep.rule == "stable"
    initial = [_factor_text(f) for f in sweep.factors]
    low, high = grid.limit_factors
    lines = ["## Learning-rate sweep", "",
             f"Grid: each optimizer's default learning rate times {initial[0]} to {initial[-1]} in half-decade "
             f"steps (×10^0.5: {', '.join(initial)}; {len(initial)} rates). Where an optimizer's best rate lay on "
             "an edge of its grid, that side grew by one half-decade step and the sweep chose again, round after "
             f"round, up to the limit of {_factor_text(low)} to {_factor_text(high)} times the default "
             f"({grid.limit_steps // 2} decades each side). Every optimizer had the same grid and the same rule; "
             f"the sweep took {_plural(sweep.rounds, 'round')}.", "",
             f"Budget of a tuning run: {_tuning_seeds_text(sweep.seeds)}, {sweep.length} (a quarter of a study "
             "run's budget, at least one epoch). Each "
             f"run's best epoch is chosen as `train` chooses it (highest validation {score}, ties: lower validation "
             f"loss), and {_rule_text(sweep)} The test split was not read.", "",
             "| optimizer | tuning runs | rates tried (× default) | chosen rate | × default |"
             + (" best mean at | trained from |" if stable else ""),
             "|---|---:|---|---:|---:|" + ("---:|---:|" if stable else "")]
    for optim, effort in optims.items():
        lines.append(f"| {optim} | {effort.runs} | {_factor_text(effort.lowest_factor)} to "
                     f"{_factor_text(effort.highest_factor)} | {effort.lr:g} | {_factor_text(effort.factor)} |"
                     + (f" {effort.best_mean_lr:g} | {percent(sweep.floors[optim])} |" if stable else ""))
    lines += _no_margin_lines(sweep)
    on_limit = [optim for optim, effort in optims.items() if effort.at_limit]
    if on_limit:
        lines += ["", f"**The best rate of {', '.join(on_limit)} is still on the limit of the grid**: a better rate "
                  "may lie beyond it, which this sweep does not try, so the study compares "
                  f"{'it' if len(on_limit) == 1 else 'them'} at the best rate within "
                  f"{grid.limit_steps // 2} decades of the default."]
    several = len(sweep.seeds) > 1
    lines += ["", f"![Validation {score} against learning rate]({LR_SWEEP_FIGURE})", "",
              f"Validation {score} of each tuning run's best epoch against its learning rate (log axis)"
              + ("; the line joins each rate's mean over the seeds, the dots are single seeds" if several else "")
              + "; the ringed point is the rate chosen"
              + ("; a boxed point is a best mean passed over for a step of margin." if stable else "."), "",
              f"| optimizer | learning rate | × default | best val {score}{' (mean)' if several else ''} | "
              + ("per seed | " if several else "") + "its val loss | final train loss | chosen |",
              "|---|---:|---:|---:|" + ("---|" if several else "") + "---:|---:|---|"]
    for row in sweep.rows:
        mark = ("**yes**" + (" (on the limit of the grid)" if row.at_limit else "")) if row.chosen else ""
        if stable and row.best_mean and not row.chosen:
            mark = "best mean, no margin"
        floor = sweep.floors.get(row.optim, -math.inf)
        marked = [percent(v) + (" ✗" if v < floor else "") for v in row.seed_scores]
        per_seed = f"{', '.join(marked)} | " if several else ""
        lines.append(f"| {row.optim} | {row.lr:g} | {_factor_text(row.factor)} | "
                     f"{percent(row.best_score(chosen_by))} | {per_seed}{row.best_val_loss:.3f} | "
                     f"{row.final_train_loss:.3f} | {mark} |")
    if several:
        lines += ["", "With several tuning seeds each row holds the mean over them (best epoch, validation loss "
                  "and final training loss alike): a rate that leaves one seed untrained scores low, so the sweep "
                  "does not choose a rate that works on one start only."
                  + (" ✗ marks a tuning run that did not train (below its optimizer's \"trained from\")."
                     if stable else "")]
    return lines


def _rule_text(sweep: TuningRecord) -> str:
    """How the rate used for the study was chosen from the sweep (--tune-rule)."""
    mean = _mean_text(sweep.seeds)
    if sweep.rule != "stable":
        return f"the learning rate whose best epoch{mean} was best by the same rule was used for the study."
    chance = "" if sweep.chance is None else f" ({percent(sweep.chance)})"
    return (f"the study used, by `--tune-rule stable`, the best{mean} of the rates that leave a step of margin: "
            "every tuning seed trained at that rate and at the next rate up. A tuning run counts as trained when "
            f"its best validation {score_name(sweep.best_chosen_by)} reached halfway from chance{chance} to its "
            "optimizer's best tuning run (\"trained from\" below). The best mean often sits next to the rate where "
            "training comes apart on some seeds, and a seed the sweep never tried may come apart at it too.")


def _no_margin_lines(sweep: TuningRecord) -> list[str]:
    """Under the rule stable, the optimizers where no rate left a margin, so the best mean was used."""
    bare = [row.optim for row in sweep.rows if row.chosen and row.stable is False]
    if not bare:
        return []
    return ["", f"**No rate of {', '.join(bare)} left a step of margin** (some tuning seed failed at it or at the "
            "next rate up, at every rate): the study used the best mean instead."]


def _tuning_seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"every rate once with each of seeds {', '.join(map(str, seeds))}"


def _mean_text(seeds: list[int]) -> str:
    return "" if len(seeds) == 1 else f" (mean over the {len(seeds)} seeds)"


def _factor_text(factor: float) -> str:
    """A grid factor to 3 significant digits: 0.0001, 0.0316, 1, 3.16, 100, 10000."""
    return f"{factor:.0f}" if factor >= 1000 else f"{factor:.3g}"


def sweep_series(sweep: TuningRecord) -> dict[str, list[SweepPoint]]:
    """Each optimizer's sweep points (learning rate, validation score of the best epoch (mean over the tuning
    seeds), chosen, each seed's score, a best mean passed over), lowest rate first."""
    chosen_by = sweep.best_chosen_by
    series: dict[str, list[SweepPoint]] = {}
    for row in sorted(sweep.rows, key=lambda row: row.lr):
        score = row.best_score(chosen_by)
        series.setdefault(row.optim, []).append(
            SweepPoint(row.lr, score, row.chosen, row.seed_scores or [score], row.best_mean and not row.chosen))
    return series


def _setup_lines(summary: Summary) -> list[str]:
    data, shared, budget = summary.data, summary.shared_settings, summary.budget
    if budget == "epochs":
        budget_text = (f"equal epochs (`--budget epochs`): every run trains {_plural(shared['epochs'], 'epoch')}"
                       + (f", or stops after {shared['patience']} without a better validation accuracy"
                          if shared.get("patience") else "") + ". Batch-size-1 SGD costs more wall time per epoch; "
                       "`--budget seconds:S` compares at equal time instead.")
    else:
        budget_text = (f"equal wall time (`--budget {budget}`): every run trains for {budget.split(':')[1]} s "
                       "(training and validation), however many epochs that allows.")
    return [f"- Data: `{data.path}`: {data.train_images} training, {data.val_images} validation and "
            f"{data.test_images} test images.",
            f"- Budget: {budget_text}",
            f"- Seeds: {', '.join(map(str, summary.seeds))}. Seed k fixes the initial weights, the shuffling "
            "order and the augmentation draws alike for every optimizer.",
            f"- Device as the runs logged it: {'; '.join(summary.devices) or 'not recorded'}.",
            "", "Settings shared by every run:", "", "| setting | value |", "|---|---|",
            *(f"| {k} | {'—' if v is None else v} |" for k, v in shared.items())]


def format_report_html(study_dir: Path, summary: Summary) -> str:
    """report.md's text, from the same summary, as one self-contained page with the study's figures inside."""
    figures = {name: (study_dir / name).read_bytes() for name in summary.figures.values()
               if (study_dir / name).is_file()}
    return page(f"Optimizer study: {', '.join(summary.optims)}", markdown_to_html(format_report(summary), figures))

"""The commands that train (train, compare) and list what training can use (optimizers, models, ...)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from catsdogs.cli.group import echo_safely, main
from catsdogs.errors import UsageError
from catsdogs.interrupts import ignore_ctrl_c
from catsdogs.study.tuning import TUNE_RULES
from catsdogs.training.config import Setting, declared_settings


_CONFIG_OPTION = click.option("--config", "config_file", default=None,
                              type=click.Path(dir_okay=False, path_type=Path),
                              help="YAML file of settings; flags override it.")


def setting_option(declared: Setting) -> Any:
    """The `train` flag of a setting, all from its declaration; None when not given, so the file's value stands."""
    if declared.kind is bool:
        name = declared.flag[2:]
        return click.option(f"--{name}/--no-{name}", declared.name, default=None, help=declared.help)
    kind = click.Choice(declared.choices) if declared.choices else declared.kind
    shown = declared.shown_default()  # written out here: click's show_default would put words in brackets
    return click.option(declared.flag, declared.name, default=None, type=kind,
                        help=declared.help + (f" [default: {shown}]" if shown else ""))


def train_options(func: Any, skip_role: str | None = None) -> Any:
    """--config and a flag for every setting that declares help, but those with `skip_role`."""
    for declared in reversed(declared_settings().values()):
        if declared.help and not (skip_role and getattr(declared, skip_role)):
            func = setting_option(declared)(func)
    return _CONFIG_OPTION(func)


def shared_run_options(func: Any) -> Any:
    """The `train` flags that a study applies to every one of its runs alike: all but the per-run ones."""
    return train_options(func, skip_role="per_run")


@main.command()
@train_options
@click.option("--resume", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this folder from its last.pt.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved config (with --resume, the resumed run's) and exit without training.")
def train(config_file: Path | None, resume: Path | None, print_config: bool, **flags: Any) -> None:
    """Train a model on the split's train/ folder, validating on val/ every epoch."""
    from catsdogs.training.distributed import team_from_environment
    from catsdogs.training.train import new_run_config
    from catsdogs.training.train import print_config as resolved_yaml
    from catsdogs.training.runs import RunFolder
    from catsdogs.training.train import train as run_training

    if resume is not None:
        if config_file is not None:
            raise UsageError("--resume takes its settings from the checkpoint; drop --config")
        if not resume.is_dir():
            raise click.ClickException(f"run folder {resume} does not exist: pass the folder of the run to continue "
                                       "(the one the interrupted run printed)")
        last = RunFolder(resume).last_path
        if not last.is_file():
            raise click.ClickException(f"{resume} has no {last.name} to resume from")
        if print_config:
            click.echo(resolved_yaml(None, resume=resume, flags=flags), nl=False)
            return
        result = run_training(None, resume=resume, flags=flags, log=echo_safely)
    else:
        cfg = new_run_config(config_file, flags)  # a recipe's runs are named after it: runs/cpu-fast
        if print_config:
            click.echo(resolved_yaml(cfg), nl=False)
            return
        result = run_training(cfg, log=echo_safely)
    code = 130 if result.status == "interrupted" else 0  # 130 like a shell's Ctrl-C: an unfinished run
    if code:
        ignore_ctrl_c()  # saved already: a late Ctrl-C must not cut the exit short
    if team_from_environment().enabled:
        end_torchrun_process(code)
    if code:
        sys.exit(code)


def end_torchrun_process(code: int) -> None:
    """End a torchrun process at once, its run saved and its process group destroyed.

    With torch 2.14, a process group that DistributedDataParallel used stays alive after
    destroy_process_group (its gloo threads keep running), and the process sometimes aborts as the
    interpreter exits ('terminate called without an active exception', SIGABRT), most likely in
    their teardown: torchrun then reports a finished run as failed. os._exit skips that teardown;
    everything the run writes is closed by now, and the output streams are flushed here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


@main.command()
@shared_run_options
@click.option("--optims", default=None,
              help="Comma-separated optimizers to compare. [default: vanilla-sgd,minibatch-sgd,momentum,adam]")
@click.option("--seeds", default=None, type=click.IntRange(min=1),
              help="Runs per optimizer; seed k gives every optimizer the same initial weights and data order. "
                   "[default: 3]")
@click.option("--budget", default=None,
              help="epochs: every run trains --epochs epochs; seconds:S: every run trains S seconds. [default: epochs]")
@click.option("--tune-lr", is_flag=True,
              help="First pick each optimizer's learning rate by short runs on a log grid (x0.01 to x100 its default, widened at an edge), on validation accuracy only.")
@click.option("--tune-seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Seeds each sweep rate trains with (the study's first seeds); a rate scores the mean of their "
                   "best validation accuracies. Needs --tune-lr.")
@click.option("--tune-rule", default="best", show_default=True, type=click.Choice(TUNE_RULES),
              help="How the sweep chooses: best: the best mean over the tuning seeds; stable: the best of the "
                   "rates where every tuning seed trained at that rate and one step up. Needs --tune-lr.")
@click.option("--lrs", default=None, metavar="OPTIM=LR,...",
              help="Learning rates to compare at, e.g. adam=0.0003,momentum=0.01; optimizers not named keep "
                   "their defaults. Not with --tune-lr.")
@click.option("--target-acc", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="Validation accuracy the report counts epochs and seconds to. [default: 0.7]")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Study folder for runs/, report.md, summary.json and figures. [default: study]")
@click.option("--force", is_flag=True, help="Delete an existing study made with other arguments and start again.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs at once, each in a process of its own: one per GPU, or an equal share of the CPUs each.")
@click.option("--threads-per-run", default=None, type=click.IntRange(min=1),
              help="CPU threads each run computes with (status.json records them). [default: the usable CPUs / "
                   "--jobs with --jobs; 1 with --ray on CPUs, the CPUs per GPU on GPUs; else PyTorch's own]")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run each run as a task on a Ray cluster: HOST:PORT, auto, or local (a cluster on this "
                   "machine, on 127.0.0.2 only). Needs the catsdogs[ray] extra.")
def compare(config_file: Path | None, optims: str | None, seeds: int | None, budget: str | None, tune_lr: bool,
            tune_seeds: int, tune_rule: str, lrs: str | None, target_acc: float | None, out: Path | None,
            force: bool, jobs: int, threads_per_run: int | None, ray_address: str | None, **flags: Any) -> None:
    """Rank optimizers: train each with several seeds alike, test every run, report with uncertainty.

    For each seed every optimizer starts from the same initial weights and sees the same data
    order. Re-running the same command skips finished runs and resumes unfinished ones; more --seeds,
    or more --epochs at a constant learning rate, extend the study and keep its runs.
    """
    from catsdogs.study.compare import StudySpec, parse_lrs, parse_optims, run_study
    from catsdogs.training.config import build_config

    chosen = {"seeds": seeds, "budget": budget, "target_acc": target_acc, "out": out}
    spec = StudySpec(build_config(config_file, flags), parse_optims(optims), tune_lr=tune_lr,
                     tune_seeds=tune_seeds, tune_rule=tune_rule, lrs=parse_lrs(lrs), jobs=jobs,
                     threads_per_run=threads_per_run, ray=ray_address,
                     **{key: value for key, value in chosen.items() if value is not None})
    from catsdogs.process import configure_process

    result = run_study(spec, force=force, log=echo_safely, process_setup=configure_process)
    if result.status == "interrupted":
        sys.exit(130)  # like a shell's Ctrl-C, so scripts can tell an unfinished study
    click.echo(f"report: {result.report}")




@main.command()
def optimizers() -> None:
    """List the registered optimizers with their defaults."""
    from catsdogs.training.optim import OPTIMIZERS, load_optimizer_plugins

    load_optimizer_plugins()
    for name in OPTIMIZERS.names():
        spec = OPTIMIZERS.get(name)
        click.echo(f"{name:<15} {spec.description}\n{'':<15} {spec.cls.__module__}.{spec.cls.__name__}: "
                   f"{spec.describe_defaults()}")


@main.command()
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(min=1),
              help="Image side at which to count FLOPs.")
def models(image_size: int) -> None:
    """List the registered models with their size and cost per image.

    GFLOP/img is the forward pass of one image, counted by torch.utils.flop_counter; a training
    step costs about three times that (forward, and backward for activations and weights).
    """
    import torch

    from catsdogs.training.models import MODELS, build_model, count_flops, count_parameters

    click.echo(f"{'model':<20}{'params':>10}{'GFLOP/img':>11}{'train ~3x':>13}  description (at {image_size}px)")
    for name in MODELS.names():
        spec = MODELS.get(name)
        if image_size < spec.min_image_size:
            click.echo(f"{name:<20}{'':>34}  needs at least {spec.min_image_size}px")
            continue
        with torch.device("meta"):  # shapes only: no memory, however large --image-size
            model = build_model(name, 2, image_size)
        flops = count_flops(model, image_size) / 1e9
        click.echo(f"{name:<20}{count_parameters(model) / 1e6:>9.2f}M{flops:>11.3f}{3 * flops:>13.3f}  "
                   f"{spec.description}")


@main.command()
def augments() -> None:
    """List the training augmentation presets."""
    from catsdogs.data.transforms import AUGMENTS

    for name in AUGMENTS.names():
        doc = (AUGMENTS.get(name).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:<16} {doc}")


@main.command()
def schedulers() -> None:
    """List the learning-rate schedules."""
    from catsdogs.training.schedules import SCHEDULERS

    for name in SCHEDULERS.names():
        doc = (SCHEDULERS.get(name).__doc__ or "").strip()
        click.echo(f"{name:<10} {doc}")

"""The command line: parse and validate options, call one library function, report in a line."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from catsdogs import __version__
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.serve_settings import BatchSettings, ServeSettings
from catsdogs.interrupts import ignore_ctrl_c
from catsdogs.names import escape_name
from catsdogs.training.config import Setting, declared_settings


class ChoiceOf(click.Choice):
    """A click.Choice of the names a library module declares (`ChoiceOf("catsdogs.data.split", "SPLITS")`).

    The module is imported when the choices are first needed, to parse or to show help, so that
    starting the command line imports no torch, numpy or PIL.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.attribute, self.case_sensitive = module, name, True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(getattr(importlib.import_module(self.module), self.attribute))


class OneLineUsageError(click.ClickException):
    """A bad option value found after parsing: one `Error:` line, and exit code 2 like click's own."""

    exit_code = 2


class CatsdogsGroup(click.Group):
    """Turns library errors into one line and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        except click.ClickException as exc:
            if os.environ.get("RANK", "0") != "0":  # under torchrun process 0 says it, once
                sys.exit(exc.exit_code)
            raise

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:  # --help and ctx.exit(): a RuntimeError to click, and no failure
            raise
        except UsageError as exc:
            raise OneLineUsageError(str(exc)) from None
        except click.UsageError as exc:  # click's own: a bad option or value, in one line too
            where = exc.ctx.command_path if exc.ctx is not None else "catsdogs"
            raise OneLineUsageError(f"{exc.format_message()} (see `{where} --help`)") from None
        except CatsdogsError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a folder in the way, a full disk, no permission: not a bug to trace
            raise click.ClickException(describe_os_error(exc)) from None
        except RuntimeError as exc:  # torch.OutOfMemoryError is one; other RuntimeErrors are bugs to trace
            from catsdogs.training.distributed import lost_peer_message
            from catsdogs.training.hardware import out_of_memory_message

            message = (lost_peer_message(exc)
                       or out_of_memory_message(exc, training=ctx.invoked_subcommand in ("train", "compare")))
            if message is None:
                raise
            raise click.ClickException(message) from None
        except KeyboardInterrupt:
            ignore_ctrl_c()  # a further Ctrl-C must not cut the exit short
            after = {"train": " at once",  # train has said what is left to resume
                     "compare": " at once: run the same command again to continue the study (finished runs are "
                                "kept, an interrupted one resumes from its last save)",
                     "split": ": nothing was written"}
            echo_safely(f"\ninterrupted{after.get(ctx.invoked_subcommand or '', '')}", err=True)
            sys.exit(130)


def echo_safely(line: str, err: bool = False) -> None:
    """click.echo for the log of long work. A closed pipe (`| tee` ended by the same Ctrl-C, or
    `| head`) must not stop the work nor lose its save: the rest of that stream goes nowhere."""
    try:
        click.echo(line, err=err)
    except BrokenPipeError:
        stream = sys.stderr if err else sys.stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason`, the way the shell reports a failed file operation."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    return f"{exc.filename}: {reason}" + (f" (-> {exc.filename2})" if exc.filename2 else "")


@click.group(cls=CatsdogsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="catsdogs")
@click.pass_context
def main(ctx: click.Context) -> None:
    """From a folder of cat and dog photos to a trained, evaluated and explained classifier.

    \b
    catsdogs split PetImages        # shuffled, stratified train/val/test split into data/
    catsdogs train --optim adam     # train the tutorial's CNN into runs/adam
    catsdogs evaluate               # test metrics of the latest run
    catsdogs plot-curves            # its loss and accuracy curves
    catsdogs predict photo.jpg      # cat or dog? with the latest run's model
    catsdogs explain --mistakes 8   # heat maps of what misled it most
    """
    from catsdogs.process import configure_process

    configure_process()  # Pillow's pixel limit, OpenCV's threads, the allocator: see catsdogs.process
    if ctx.invoked_subcommand != "train" and "WORLD_SIZE" in os.environ:
        # Under torchrun only `train` shares out its work; another command would run N times over.
        from catsdogs.training.distributed import team_from_environment

        if team_from_environment().enabled:
            raise UsageError(f"only `catsdogs train` runs under torchrun; run `catsdogs {ctx.invoked_subcommand}` "
                             "as one process")


@main.command()
@click.option("--dest", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder that will hold PetImages/ and the downloaded zip.")
def download(dest: Path) -> None:
    """Download Microsoft's Kaggle Cats and Dogs photos (787 MB) and extract them to DEST/PetImages."""
    from catsdogs.data.download import download_petimages

    result = download_petimages(dest)
    if not result.extracted:
        click.echo(f"{result.path} already holds the photos; nothing to do.")
    else:
        click.echo(f"Extracted to {result.path}; archive kept at {result.archive} (delete it to free 787 MB).")
    click.echo(f"Next: catsdogs split {shlex.quote(str(result.path))}")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", default="data", show_default=True, type=click.Path(path_type=Path),
              help="Folder to write train/, val/ and test/ into.")
@click.option("--ratios", default="0.63,0.07,0.30", show_default=True,
              help="Fractions for train,val,test (the tutorial's 30% test, 7% validation).")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the shuffle.")
@click.option("--layout", default="auto", show_default=True, type=ChoiceOf("catsdogs.data.split", "LAYOUTS"),
              help="folders: one subfolder per class (PetImages); kaggle: flat cat.N.jpg/dog.N.jpg.")
@click.option("--mode", default="link", show_default=True, type=ChoiceOf("catsdogs.data.split", "MODES"),
              help="How files land in the split: hard links (copies across filesystems), copies or symlinks.")
@click.option("--jobs", default=None, type=click.IntRange(min=1), help="Processes decoding images [the CPUs this process may run on].")
@click.option("--force", is_flag=True, help="Replace an output folder that split made with other arguments (never a "
                                          "folder split did not make).")
def split(source: Path, out: Path, ratios: str, seed: int, layout: str, mode: str, jobs: int | None,
          force: bool) -> None:
    """Check every image in SOURCE and split it into train/val/test folders."""
    from catsdogs.data.split import parse_ratios, split_dataset

    summary = split_dataset(source, out, parse_ratios(ratios), seed=seed, layout=layout, mode=mode, jobs=jobs,
                            force=force)
    click.echo(summary.format())


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
            target_acc: float | None, out: Path | None, force: bool, jobs: int, threads_per_run: int | None,
            ray_address: str | None, **flags: Any) -> None:
    """Rank optimizers: train each with several seeds alike, test every run, report with uncertainty.

    For each seed every optimizer starts from the same initial weights and sees the same data
    order. Re-running the same command skips finished runs and resumes unfinished ones; more --seeds,
    or more --epochs at a constant learning rate, extend the study and keep its runs.
    """
    from catsdogs.study.compare import StudySpec, parse_optims, run_study
    from catsdogs.training.config import build_config

    chosen = {"seeds": seeds, "budget": budget, "target_acc": target_acc, "out": out}
    spec = StudySpec(build_config(config_file, flags), parse_optims(optims), tune_lr=tune_lr, jobs=jobs,
                     threads_per_run=threads_per_run, ray=ray_address,
                     **{key: value for key, value in chosen.items() if value is not None})
    from catsdogs.process import configure_process

    result = run_study(spec, force=force, log=echo_safely, process_setup=configure_process)
    if result.status == "interrupted":
        sys.exit(130)  # like a shell's Ctrl-C, so scripts can tell an unfinished study
    click.echo(f"report: {result.report}")


_RUN_OPTION = click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
                           help="Run folder whose model to use. [default: the most recent run under runs/]")
_CHECKPOINT_OPTION = click.option("--checkpoint", default="best", show_default=True,
                                  help="best, last, or a path to a .pt file.")
# Where evaluate, predict and explain run: the `device` setting's flag (as train's), with its default given.
_DEVICE = declared_settings()["device"]
_DEVICE_OPTION = click.option(_DEVICE.flag, _DEVICE.name, default=_DEVICE.default, show_default=True,
                              type=click.Choice(_DEVICE.choices), help=_DEVICE.help)
# The sides a model may be fed at, bounded as the `image_size` setting is.
_IMAGE_SIZE = click.IntRange(min=1, max=int(declared_settings()["image_size"].maximum))  # type: ignore[arg-type]


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "split_name", default="test", show_default=True,
              type=ChoiceOf("catsdogs.data.split", "SPLITS"),
              help="Which split to evaluate.")
@_CHECKPOINT_OPTION
@click.option("--data", default=None,
              help="A split folder, or a folder of class subfolders (Cat/, Dog/) to measure on all its photos. "
                   "[default: the split the run trained on]")
@_DEVICE_OPTION
@click.option("--tta", is_flag=True, help="Average each prediction with that of the mirror image.")
@click.option("--tta-mode", default=None, type=ChoiceOf("catsdogs.training.scoring", "TTA_MODES"),
              help="Views --tta averages: flip (the mirror image), flip-shift (also each shifted by 1/32 of the "
                   "side both ways: six views). Implies --tta. [default: flip]")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the results. [default: RUN_DIR, or RUN_DIR/eval-<name> with --data of another "
                   "folder]")
@click.option("--image-size", default=None, type=_IMAGE_SIZE,
              help="Measure at this side instead (FixRes: a little above the training size often scores "
                   "better); the files get a _<N>px suffix. [default: the size the run trained at]")
def evaluate(run_dir: Path | None, split_name: str, checkpoint: str, data: str | None, device: str,
             tta: bool, tta_mode: str | None, out: Path | None, image_size: int | None) -> None:
    """Measure a trained run on a split; writes metrics.json and confusion_matrix.png into it."""
    from catsdogs.data.images import describe_left_out
    from catsdogs.inference.evaluate import evaluate_run
    from catsdogs.inference.metrics import format_metrics

    run_dir = _run_or_latest(run_dir, "evaluating", err=False)
    result = evaluate_run(run_dir, split=split_name, checkpoint=checkpoint, data=data, device=device,
                          tta=tta_mode or tta, out_dir=out, image_size=image_size)
    click.echo(format_metrics(result.metrics))
    left_out = [(Path(item["path"]), item["reason"]) for item in result.metrics["left_out"]]
    for line in describe_left_out(left_out):
        click.echo(f"left out: {line}", err=True)
    if "warning" in result.metrics:
        click.echo(f"warning: {result.metrics['warning']}", err=True)
    unreadable = result.metrics["unreadable_images"]
    if unreadable:
        more = " ..." if len(unreadable) > 3 else ""
        click.echo(f"warning: {len(unreadable)} photo(s) could not be read and were left out (listed in "
                   f"{result.metrics_path.name}): {', '.join(unreadable[:3])}{more}", err=True)
    click.echo(f"wrote {result.metrics_path}, {result.figure_path} and {result.predictions_path}")


def _run_or_latest(run_dir: Path | None, doing: str = "using", err: bool = True) -> Path:
    """The run given, or the most recent run under runs/, saying so ("`doing` the most recent run: ...")."""
    from catsdogs.training.runs import latest_run

    if run_dir is None:
        run_dir = latest_run()
        click.echo(f"{doing} the most recent run: {run_dir}", err=err)
    return run_dir


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@_RUN_OPTION
@_CHECKPOINT_OPTION
@_DEVICE_OPTION
@click.option("--tta", is_flag=True, help="Average each prediction with that of the mirror image.")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the predictions to this .csv file instead of listing them.")
@click.option("--model", "model_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Classify with a file from `catsdogs export` (.onnx through onnxruntime, or TorchScript) "
                   "instead of a run.")
@click.option("--image-size", default=None, type=_IMAGE_SIZE,
              help="Feed the run's model at this side instead, as `evaluate --image-size`. [default: the size the "
                   "run trained at]")
def predict(photos: tuple[Path, ...], run_dir: Path | None, checkpoint: str, device: str, tta: bool,
            out: Path | None, model_file: Path | None, image_size: int | None) -> None:
    """Classify photos, or every photo in folders, with a trained run or an exported model file.

    Prints one line per photo: the class, its probability and the path.
    """
    from catsdogs.inference.predict import (check_image_size, check_predictions_out, format_prediction_lines,
                                            load_trained, predict_photos, write_predictions_csv)

    if out is not None and out.suffix.lower() != ".csv":
        raise UsageError(f"--out {out}: give a file name ending in .csv")
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist (create it first, or name a file in an "
                         "existing folder)")
    if out is not None:
        check_predictions_out(out)
    if model_file is not None:
        from catsdogs.inference.exported import load_exported

        if run_dir is not None or checkpoint != "best":
            raise UsageError("--model classifies with the exported file alone: drop --run and --checkpoint")
        if device not in ("auto", "cpu"):
            raise UsageError(f"--model runs on the CPU: drop --device {device}")
        if image_size is not None:
            raise UsageError("--model classifies at the size the file was exported at: drop --image-size")
        trained = load_exported(model_file)
    else:  # a bad --run (or --image-size) is told before the photos
        trained = load_trained(_run_or_latest(run_dir), checkpoint, device)
        image_size = check_image_size(trained, image_size)
    files = _photos_or_report(photos)
    result = predict_photos(trained, files, tta=tta, image_size=image_size)
    if out is not None:
        existed = out.exists()
        write_predictions_csv(out, result)
        click.echo(f"wrote {out}" + (" (replacing the earlier predictions there)" if existed else ""))
    else:
        for line in format_prediction_lines(result):
            click.echo(line)
    for photo, reason in result.unreadable:  # on stderr, so that stdout stays one photo per line
        click.echo(f"unreadable: {escape_name(str(photo))} ({reason})", err=True)
    counts = ", ".join(f"{n} {name}" for name, n in result.counts().items())
    click.echo(f"{_photos(len(result.paths))} classified ({counts})"
               + (f"; {len(result.unreadable)} unreadable" if result.unreadable else ""), err=True)
    if not result.paths:
        raise click.ClickException(_none_readable(len(files)))


def _none_readable(count: int) -> str:
    return "the photo could not be read" if count == 1 else f"none of the {count} photos could be read"


def _photos(count: int) -> str:
    return f"{count} photo" + ("" if count == 1 else "s")


def _photos_or_report(paths: tuple[Path, ...]) -> list[Path]:
    """The photos named (folders searched), telling on stderr what else the folders held."""
    from catsdogs.data.images import describe_left_out
    from catsdogs.inference.predict import collect_photos

    left_out: list[tuple[Path, str]] = []
    files = collect_photos(paths, left_out)
    for line in describe_left_out(left_out):
        click.echo(f"left out: {line}", err=True)
    return files


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", default="onnx", show_default=True,
              type=ChoiceOf("catsdogs.inference.export", "FORMATS"),
              help="onnx (needs the export extra: pip install \"catsdogs[export]\") or torchscript.")
@_CHECKPOINT_OPTION
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write. [default: RUN_DIR/export/model.onnx, model.torchscript or model.int8.onnx]")
@click.option("--quantize", default=None, type=click.Choice(["int8"]),
              help="ONNX only: int8 static quantization, its ranges calibrated on the run's training photos.")
@click.option("--verify-on", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Verify on the photos of this folder (class subfolders give accuracies too). "
                   "[default: the run's test photos]")
@click.option("--verify-n", default=256, show_default=True, type=click.IntRange(min=1),
              help="Photos to verify on at most, taken evenly across the folder (int8: at least 1000, or all).")
@click.option("--force", is_flag=True, help="Replace an existing file at --out (never a verification.json that "
                                          "catsdogs did not write).")
def export(run_dir: Path | None, fmt: str, checkpoint: str, out: Path | None, quantize: str | None,
           verify_on: Path | None, verify_n: int, force: bool) -> None:
    """Export a run's model to ONNX or TorchScript for apps, then verify it against PyTorch on photos.

    The file takes uint8 RGB photos [N, H, W, 3] at the run's image size and returns class
    probabilities and logits; class names, image size and the resize rule are in its metadata.
    Verification is always run: an fp32 file must give every photo PyTorch's class and
    probabilities within 1e-4, an int8 one PyTorch's class on at least 99% of 1000 photos (or
    all there are); otherwise nothing is written and the command fails. The figures go to
    verification.json beside the file. An existing file is replaced only with --force.
    """
    from catsdogs.inference.export import export_run

    export_run(_run_or_latest(run_dir), fmt=fmt, checkpoint=checkpoint, out=out, quantize=quantize,
               verify_on=verify_on, verify_n=verify_n, force=force, log=echo_safely)


@main.command()
@click.argument("photos", nargs=-1, type=click.Path(path_type=Path, readable=False))
@_RUN_OPTION
@_CHECKPOINT_OPTION
@_DEVICE_OPTION
@click.option("--mistakes", default=None, type=click.IntRange(min=1),
              help="Explain the N most confident mistakes of the run's last `evaluate` instead of PHOTOS.")
@click.option("--target", default=None, help="Class whose evidence to show. [default: the predicted class]")
@click.option("--layer", default=None, help="Module whose feature maps to use (a map at least 2x2). [default: the "
                                            "deepest at least 5x5 cells]")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the figures and explanations.csv. [default: RUN/explain]")
def explain(photos: tuple[Path, ...], run_dir: Path | None, checkpoint: str, device: str, mistakes: int | None,
            target: str | None, layer: str | None, out: Path | None) -> None:
    """Show which parts of each photo made the model decide, as Grad-CAM heat maps."""
    from catsdogs.inference.explain import explain_photos, worst_mistakes
    from catsdogs.inference.predict import load_trained
    from catsdogs.training.runs import EXPLANATIONS_FILE, RunFolder

    if photos and mistakes:
        raise UsageError("name photos (or folders) to explain, or use --mistakes N, not both")
    if not photos and not mistakes:
        raise UsageError("name photos (or folders) to explain, or use --mistakes N")
    run_dir = _run_or_latest(run_dir)
    truths = worst_mistakes(run_dir, mistakes) if mistakes else None
    if truths and len(truths) < mistakes:
        click.echo(f"the last evaluation of {run_dir} made only {len(truths)} mistakes: explaining them all", err=True)
    trained = load_trained(run_dir, checkpoint, device)
    files = list(truths) if truths else _photos_or_report(photos)
    out = out or RunFolder(run_dir).explain_dir
    done, unreadable, used_layer = explain_photos(trained, files, out, target, layer, truths=truths)
    for item in done:
        click.echo(f"{item.predicted:<8}{item.probability:>7.3f}  {escape_name(str(item.photo))} -> "
                   f"{escape_name(str(item.figure))}")
    for photo, reason in unreadable:
        click.echo(f"unreadable: {escape_name(str(photo))} ({reason})", err=True)
    listing = out / EXPLANATIONS_FILE
    click.echo(f"{_photos(len(done))} explained at layer {used_layer}; list in {listing}", err=True)
    if not done:
        raise click.ClickException(_none_readable(len(files)))


@main.command("plot-curves")
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file (.png, .svg or .pdf). [default: RUN_DIR/curves.png, or curves.png for several]")
def plot_curves_command(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Plot training and validation loss and accuracy against epoch, overlaying several runs."""
    from catsdogs.inference.plots import DEFAULT_NAME, plot_curves

    runs = list(run_dirs) or [_run_or_latest(None, "plotting", err=False)]
    for run in runs:
        if not run.is_dir():
            raise click.ClickException(f"run folder {run} does not exist")
    target = out or (runs[0] / DEFAULT_NAME if len(runs) == 1 else Path(DEFAULT_NAME))
    click.echo(f"wrote {plot_curves(runs, target)}")


@main.command()
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--split", "split_name", default="train", show_default=True,
              type=ChoiceOf("catsdogs.data.split", "SPLITS"),
              help="Which split of a split folder (a plain folder of class folders has none).")
@click.option("--n", "count", default=32, show_default=True, type=int, help="Photos in the grid.")
@click.option("--augment", default=None, is_flag=False, flag_value="", metavar="[RUN_DIR]",
              help="Show the first training images as the model gets them (resized, augmented), under the "
                   "default settings or those of RUN_DIR (and from its data unless DATA is given).")
@click.option("--seed", default=None, type=int, help="Seed of the draw. [default: 42, or the run's with --augment]")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file (.png, .svg or .pdf). [default: show-<split>.png, show-train-augmented.png]")
def show(data: Path | None, split_name: str, count: int, augment: str | None, seed: int | None,
         out: Path | None) -> None:
    """Draw a grid of random photos of a split (default: data, train), each titled with its class.

    DATA is a split folder or a folder of class folders. With --augment the grid shows what
    training feeds the model, through the same code and random seeds as `catsdogs train`.
    """
    from catsdogs.inference.show import show as draw

    grid, written = draw(data, split_name, count, augment, seed, out)
    if grid.unreadable:
        click.echo(f"passed over {_photos(len(grid.unreadable))} that could not be read: "
                   f"{', '.join(str(p) for p in grid.unreadable[:3])}" + (" ..." if len(grid.unreadable) > 3 else ""),
                   err=True)
    click.echo(f"wrote {written} ({_photos(len(grid.pixels))})")


@main.command("report")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
def report_command(run_dir: Path | None) -> None:
    """Write RUN_DIR/report.html: one page with the run's config, data, curves, test metrics,
    calibration, worst mistakes and training images, that opens offline in any browser."""
    from catsdogs.inference.run_report import write_run_report

    result = write_run_report(_run_or_latest(run_dir))
    by_command: dict[str, list[str]] = {}
    for part, command in result.missing:
        by_command.setdefault(command, []).append(part)
    for command, parts in by_command.items():
        click.echo(f"not in the report yet: {', '.join(parts)}" + (f" (run `{command}`)" if command else ""), err=True)
    if result.stale:
        click.echo(f"warning: {result.stale}")
    click.echo(f"wrote {result.path}")


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Serve a file from `catsdogs export` instead of the run's own model (with RUN_DIR, heat maps "
                   "still come from the run's checkpoint; without it there are none).")
@_DEVICE_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 lets every machine that can reach this one use the model.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--max-batch", default=BatchSettings.max_batch, show_default=True, type=click.IntRange(min=1),
              help="Photos of concurrent requests run through the model together at most (1: no batching).")
@click.option("--max-wait-ms", default=BatchSettings.max_wait_ms, show_default=True, type=click.FloatRange(min=0),
              help="How long a photo waits for others to fill its batch at most.")
@click.option("--max-queue", default=BatchSettings.max_queue, show_default=True, type=click.IntRange(min=1),
              help="Photos waiting at most; past that the server answers 503 with Retry-After.")
@click.option("--max-upload-mb", default=ServeSettings.max_upload_mb, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Largest request body, in MB (larger: 413).")
@click.option("--max-files", default=ServeSettings.max_files, show_default=True, type=click.IntRange(min=1),
              help="Photos in one request at most (more: 413).")
@click.option("--max-pixels", default=ServeSettings.max_pixels, show_default=True, type=click.IntRange(min=1),
              help="Pixels in one photo at most, counted from its header before decoding (more: 413); at most "
                   "catsdogs' own bound, 250 million. The default lets a 12-megapixel phone photo through and "
                   "bounds the memory each decoding thread takes.")
def serve(run_dir: Path | None, model_file: Path | None, device: str, host: str, port: int, max_batch: int,
          max_wait_ms: float, max_queue: int, max_upload_mb: float, max_files: int, max_pixels: int) -> None:
    """Serve a run's model as a web page and an HTTP API, batching concurrent requests.

    Uses the run's verified ONNX export through onnxruntime when there is one made from its best
    checkpoint, and the checkpoint otherwise. The page (/) classifies dropped photos and shows
    their heat maps; POST /predict, POST /explain, GET /model and GET /health are described at
    /openapi.json. Ctrl-C or SIGTERM answers the requests in flight, then stops.
    """
    from catsdogs.data.images import MAX_IMAGE_PIXELS
    from catsdogs.inference.serve import EVERY_INTERFACE, require_serving, serve as serve_model

    require_serving()
    if max_pixels > MAX_IMAGE_PIXELS:
        raise UsageError(f"--max-pixels {max_pixels:,} is over catsdogs' decoding bound of {MAX_IMAGE_PIXELS:,}")
    if model_file is None or run_dir is not None:
        run_dir = _run_or_latest(run_dir, "serving")
    if host in EVERY_INTERFACE:
        click.echo(f"warning: --host {host or repr(host)} listens on every interface: anyone who can reach this machine "
                   "can use the model", err=True)
    settings = ServeSettings(BatchSettings(max_batch, max_wait_ms, max_queue), max_upload_mb, max_files,
                             max_pixels=max_pixels)

    def ready(served: Any, address: str) -> None:
        click.echo(f"serving {served.info['served_from']} ({served.info['engine']}) at {address}", err=True)
        click.echo(f"open {address} in a browser; Ctrl-C stops the server", err=True)

    serve_model(run_dir, model_file=model_file, device=device, host=host, port=port, settings=settings,
                on_ready=ready)


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


if __name__ == "__main__":  # pragma: no cover
    main()

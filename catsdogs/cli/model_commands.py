"""The commands that use a trained model: evaluate, predict, export, explain, plot-curves, report, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from catsdogs.cli.group import ChoiceOf, echo_safely, main, n_photos, none_readable
from catsdogs.errors import UsageError
from catsdogs.inference.serve_settings import BatchSettings, ServeSettings
from catsdogs.names import escape_name
from catsdogs.training.config import declared_settings


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
    click.echo(f"{n_photos(len(result.paths))} classified ({counts})"
               + (f"; {len(result.unreadable)} unreadable" if result.unreadable else ""), err=True)
    if not result.paths:
        raise click.ClickException(none_readable(len(files)))


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
    click.echo(f"{n_photos(len(done))} explained at layer {used_layer}; list in {listing}", err=True)
    if not done:
        raise click.ClickException(none_readable(len(files)))


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

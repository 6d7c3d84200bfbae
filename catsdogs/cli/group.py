"""The `catsdogs` command group: library errors become one line and an exit code; helpers all commands share.

The commands live beside it, one module for each stage they serve.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from catsdogs import __version__
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.interrupts import ignore_ctrl_c


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


def none_readable(count: int) -> str:
    return "the photo could not be read" if count == 1 else f"none of the {count} photos could be read"


def n_photos(count: int) -> str:
    return f"{count} photo" + ("" if count == 1 else "s")

"""The README stays true: every command line it shows parses with the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from catsdogs.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    lines = []
    for line in README.read_text().splitlines():
        match = re.match(r"^    (catsdogs \S.*?)(\s+#.*)?$", line)  # indented code lines
        if match:
            lines.append(match.group(1).strip())
    return lines


def test_the_readme_shows_every_command() -> None:
    shown = {shlex.split(line)[1] for line in readme_commands()}
    assert set(main.commands) <= shown | {"optimizers", "models", "schedulers", "augments"}
    assert {"split", "train", "evaluate", "plot-curves", "compare", "download"} <= shown


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line: str) -> None:
    _, name, *args = shlex.split(line)
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"README shows unknown command {name!r}"
    command.make_context(name, list(args))  # raises on an unknown option or a bad value

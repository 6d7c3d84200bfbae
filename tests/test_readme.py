"""The README and docs/ stay true: every command line they show runs as written.

Shell blocks (```sh) may hold only commands of a known kind, each checked:
`catsdogs ...` parses with the real CLI; `python benchmarks/x.py ...` names a script that
exists and options its argparse accepts; a recipe draft (`sed ... configs/recipes/x.yaml > y.yaml`)
writes a config that loads and differs from the recipe; set-up lines are the documented ones. Commands in
inline code name only options their command has. No command points to a folder that exists
only on the development machine.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from catsdogs.cli import main
from catsdogs.training.config import build_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
# The console script of the plugin package docs/extending.md builds: catsdogs' own CLI plus its registrations.
CLI_NAMES = {"catsdogs", "catsdogs-extras"}
# Paths that exist only on the development machine, or vanish with it.
FOREIGN_PATHS = ("/tmp", "../shared", "/work/", "~/")


@dataclass(frozen=True)
class Shown:
    """A command line as a page shows it, and where."""

    page: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.text}"


def code_blocks(page: Path) -> list[tuple[str, list[tuple[int, str]]]]:
    """The fenced code blocks of a markdown page: (info string, [(line number, line), ...])."""
    blocks, current, info = [], None, ""
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and current is None:
            current, info = [], fence.group(1)
        elif fence:
            blocks.append((info, current))
            current = None
        elif current is not None:
            current.append((number, line))
    assert current is None, f"{page}: a code block is not closed"
    return blocks


def shell_commands(pages: list[Path] = PAGES) -> list[Shown]:
    """Every command in the pages' shell blocks, continuation lines joined, comments kept out."""
    found = []
    for page in pages:
        for info, lines in code_blocks(page):
            if info not in SHELL_BLOCKS:
                continue
            pending, start = "", 0
            for number, line in lines:
                text = line.strip()
                if not pending and (not text or text.startswith("#")):
                    continue
                start = start if pending else number
                if text.endswith("\\"):
                    pending += text[:-1] + " "
                    continue
                found.append(Shown(page, start, pending + text))
                pending = ""
    return found


def prose_outside_code(page: Path) -> str:
    """The page with its fenced code blocks blanked out, lines kept where they were."""
    return re.sub(r"^\s*```.*?^\s*```[^\n]*$", lambda block: "\n" * block.group(0).count("\n"), page.read_text(),
                  flags=re.S | re.M)


def inline_commands(pages: list[Path] = PAGES) -> list[Shown]:
    """Commands written in inline code in the prose and tables: `catsdogs ...`, `python benchmarks/...`."""
    found = []
    for page in pages:
        for number, line in enumerate(prose_outside_code(page).splitlines(), start=1):
            for span in re.findall(r"`([^`]+)`", line):
                if span.split(" ", 1)[0] in CLI_NAMES | {"torchrun"} and " " in span \
                        or span.startswith("python benchmarks/"):
                    found.append(Shown(page, number, span))
    return found


def cli_arguments(tokens: list[str]) -> list[str] | None:
    """The arguments a command line gives the catsdogs CLI, or None when it does not run it."""
    if tokens[0] in CLI_NAMES:
        return tokens[1:]
    if tokens[:3] == ["python", "-m", "catsdogs"]:
        return tokens[3:]
    if tokens[0] == "torchrun":
        for index in range(len(tokens) - 1):
            if tokens[index:index + 2] == ["-m", "catsdogs"]:
                return tokens[index + 2:]
    return None


def parse_with_cli(arguments: list[str]) -> None:
    """Parse as `catsdogs ARGS` would, without running: raises on an unknown option or a bad value."""
    if arguments and not arguments[0].startswith("-"):
        name, *rest = arguments
        command = main.get_command(click.Context(main), name)
        assert command is not None, f"unknown command {name!r}"
        command.make_context(name, rest)
        return
    try:
        main.make_context("catsdogs", list(arguments))
    except click.exceptions.Exit as done:  # --version and --help print and exit
        assert done.exit_code == 0


def benchmark_parser(script: Path) -> argparse.ArgumentParser:
    """The script's own argument parser, rebuilt from its add_argument calls without importing it.

    The option strings, arity, actions and choices are the script's; `type=Path` becomes a string,
    so a value is checked for being there, and numbers for being numbers.
    """
    parser = argparse.ArgumentParser(prog=script.name)
    calls = [node for node in ast.walk(ast.parse(script.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]
    assert calls, f"{script} declares no arguments with argparse"
    for call in calls:
        kept = {}
        for keyword in call.keywords:
            if keyword.arg in ("action", "nargs", "required", "choices"):
                kept[keyword.arg] = ast.literal_eval(keyword.value)
            elif keyword.arg == "type" and isinstance(keyword.value, ast.Name) and keyword.value.id in ("int", "float"):
                kept["type"] = {"int": int, "float": float}[keyword.value.id]
        parser.add_argument(*(ast.literal_eval(arg) for arg in call.args), **kept)
    return parser


def check_benchmark_line(tokens: list[str], whole_line: bool) -> None:
    script = ROOT / tokens[1]
    assert script.is_file(), f"{tokens[1]} does not exist"
    parser = benchmark_parser(script)
    if whole_line:
        try:
            parser.parse_args(tokens[2:])
        except SystemExit as refused:
            raise AssertionError(f"{script.name} refuses these arguments (its message is above)") from refused
    else:  # prose may name placeholders: check the option names only
        known = set(parser._option_string_actions)
        unknown = [t for t in tokens[2:] if t.startswith("--") and t.split("=")[0] not in known]
        assert not unknown, f"{script.name} has no option {unknown}"


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


SETUP_LINES = {"python -m venv .venv", ". .venv/bin/activate", 'pip install -e ".[dev]"', "python -m pytest -q",
               "pip install -e .", "bash .ci/run"}


# A candidate recipe made from one of configs/recipes/ with one setting changed, as benchmarks.md shows them.
RECIPE_DRAFT = re.compile(r"^(?:sed '[^']*' |\(cat )(configs/recipes/[\w-]+\.yaml).*> ([\w-]+\.yaml)$")


def check_recipe_draft(shown: Shown, workdir: Path) -> None:
    """Run the line beside a copy of configs/: the file it writes must load, and differ from its recipe."""
    shutil.copytree(ROOT / "configs", workdir / "configs", dirs_exist_ok=True)
    done = subprocess.run(["bash", "-c", shown.text], cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    source, draft = (workdir / name for name in RECIPE_DRAFT.match(shown.text).groups())
    assert build_config(draft, {}) != build_config(source, {}), "the draft changes nothing in the recipe"


def check_ray_line(tokens: list[str]) -> None:
    """A `ray start ...` line of the cluster docs: Ray's own command-line parser must know its options."""
    scripts = pytest.importorskip("ray.scripts.scripts", reason="the ray extra (pip install -e '.[dev]')")
    command = scripts.cli.get_command(click.Context(scripts.cli), tokens[1])
    assert command is not None, f"ray has no command {tokens[1]!r}"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [t for t in tokens[2:] if t.startswith("--") and t.split("=")[0] not in known]
    assert not unknown, f"ray {tokens[1]} has no option {unknown}"


def check_shell_line(shown: Shown, workdir: Path) -> None:
    tokens = shlex.split(shown.text, comments=True)
    assert not any(path in shown.text for path in FOREIGN_PATHS), "a folder only the development machine has"
    arguments = cli_arguments(tokens)
    if arguments is not None:
        parse_with_cli(arguments)
    elif tokens[0] == "python" and tokens[1].startswith("benchmarks/"):
        check_benchmark_line(tokens, whole_line=True)
    elif RECIPE_DRAFT.match(shown.text):
        check_recipe_draft(shown, workdir)
    elif tokens[0] == "make":
        assert set(tokens[1:]) <= make_targets(), "no such make target"
    elif tokens[0] == "ray":
        check_ray_line(tokens)
    else:
        assert shown.text in SETUP_LINES, "a command of a kind this test does not check: add a check for it"


def check_inline(shown: Shown) -> None:
    tokens = shlex.split(shown.text)
    assert not any(path in shown.text for path in FOREIGN_PATHS), "a folder only the development machine has"
    arguments = cli_arguments(tokens)
    if arguments is None:
        check_benchmark_line(tokens, whole_line=False)
        return
    command: click.Command = main
    if arguments and not arguments[0].startswith("-"):
        command = main.get_command(click.Context(main), arguments[0])
        assert command is not None, f"unknown command {arguments[0]!r}"
    known = {"--help", "-h"} | {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [t for t in arguments if t.startswith("-") and t.split("=")[0] not in known]
    assert not unknown, f"`{command.name}` has no option {unknown}"


def test_every_page_shows_commands() -> None:
    assert {line.page for line in shell_commands()} == set(PAGES)


@pytest.mark.parametrize("shown", shell_commands(), ids=str)
def test_shell_command_runs_as_written(shown: Shown, tmp_path: Path) -> None:
    check_shell_line(shown, tmp_path)


@pytest.mark.parametrize("shown", inline_commands(), ids=str)
def test_inline_command_names_real_options(shown: Shown) -> None:
    check_inline(shown)


def test_the_readme_shows_the_quick_start() -> None:
    shown = [shlex.split(line.text) for line in shell_commands([README])]
    names = {tokens[1] for tokens in shown if tokens[0] == "catsdogs"}
    assert {"download", "split", "train", "evaluate", "plot-curves", "predict", "explain"} <= names
    assert ["pip", "install", "-e", ".[dev]"] in shown and ["python", "-m", "pytest", "-q"] in shown


def test_the_docs_show_every_command() -> None:
    shown = {cli_arguments(shlex.split(line.text))[0] for line in shell_commands([ROOT / "docs" / "commands.md"])
             if cli_arguments(shlex.split(line.text))}
    assert set(main.commands) <= shown


def test_the_checks_catch_wrong_lines(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```sh\ncatsdogs train --optimiser adam\npython benchmarks/bench_train.py --dta data\n"
                    "python benchmarks/bench_nothing.py\ncatsdogs split /tmp/photos\nrm -rf runs\n"
                    "sed 's/^nothing: 1/nothing: 2/' configs/recipes/cpu-fast.yaml > same.yaml\n```\n\n"
                    "Inline, `catsdogs evaluate --splits val` and `python benchmarks/bench_train.py --dta DIR`.\n")
    shown = shell_commands([page])
    expected = ["optimiser", "refuses", "does not exist", "development machine", "does not check", "changes nothing"]
    assert len(shown) == len(expected)
    for line, message in zip(shown, expected):
        with pytest.raises((AssertionError, click.UsageError), match=message):
            check_shell_line(line, tmp_path)
    inline = inline_commands([page])
    assert [line.text for line in inline] == ["catsdogs evaluate --splits val", "python benchmarks/bench_train.py --dta DIR"]
    for line in inline:
        with pytest.raises(AssertionError, match="has no option"):
            check_inline(line)

"""docs/ stays true: each command's documented options are its --help's, links resolve, the plugin example works.

docs/commands.md has one section per command, headed "## `catsdogs NAME`", whose list items
that start with an option in code ("- `--flag VALUE`: ...") are the options it documents.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from catsdogs.cli import main
from catsdogs.training.optim import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS_PAGE = ROOT / "docs" / "commands.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 10_500


def documented_sections(page: Path = COMMANDS_PAGE) -> dict[str, str]:
    """Each command's section of the page by command name ("" for the group itself)."""
    sections: dict[str, str] = {}
    name = None
    for line in page.read_text().splitlines():
        heading = re.match(r"^## `catsdogs(?: ([\w-]+))?`\s*$", line)
        if heading:
            name = heading.group(1) or ""
            assert name not in sections, f"two sections for catsdogs {name}"
            sections[name] = ""
        elif line.startswith("## "):
            name = None
        elif name is not None:
            sections[name] += line + "\n"
    return sections


def documented_options(section: str) -> set[str]:
    return set(re.findall(r"^- `(--?[\w-]+)", section, flags=re.M))


def click_options(command: click.Command) -> set[str]:
    """What --help lists for the command, but --help itself: every option's names, on and off forms."""
    return {name for param in command.params if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)}


def commands() -> dict[str, click.Command]:
    return {"": main, **{name: main.get_command(click.Context(main), name) for name in main.commands}}


def test_every_command_has_a_section_and_no_other() -> None:
    assert set(documented_sections()) == set(commands())


@pytest.mark.parametrize("name", sorted(commands()), ids=lambda name: f"catsdogs {name}".strip())
def test_documented_options_are_the_help_options(name: str) -> None:
    command = commands()[name]
    documented = documented_options(documented_sections()[name])
    actual = click_options(command)
    assert documented - actual == set(), "documented, but --help has no such option"
    assert actual - documented == set(), "in --help, but not documented in docs/commands.md"


@pytest.mark.parametrize("name", sorted(commands()), ids=lambda name: f"catsdogs {name}".strip())
def test_each_section_says_what_help_says(name: str) -> None:
    summary = " ".join(inspect.cleandoc(commands()[name].help or "").split("\n\n")[0].split())
    assert summary in " ".join(documented_sections()[name].split())


def test_the_option_list_convention_reads_options() -> None:
    section = "Intro `--not-an-option` in prose.\n\n- `--out DIR`: the folder.\n- `--force`: replace.\n" \
              "  - `--nested`: not an option line.\n- `data/`: a file, not an option.\n"
    assert documented_options(section) == {"--out", "--force"}


def test_the_readme_is_short() -> None:
    assert len(README.read_text()) <= README_LIMIT


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors: set[str] = set()
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, count = slug, 0
        while anchor in anchors:
            count += 1
            anchor = f"{slug}-{count}"
        anchors.add(anchor)
    return anchors


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings(page: Path) -> None:
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in heading_anchors(linked), f"{target}: no such heading"


def test_the_link_check_sees_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A `b` title, here\n\n[x](other.md) [y](#a-b-title-here) [z](https://example.com)\n"
                    "```sh\n[not](a-link.md)\n```\n")
    assert relative_links(page) == ["other.md", "#a-b-title-here"]
    assert heading_anchors(page) == {"a-b-title-here"}


# The plugin package docs/extending.md builds: its code blocks start with the file's path as a comment.
EXTENDING = ROOT / "docs" / "extending.md"


def example_files() -> dict[str, str]:
    files = {}
    for block in re.findall(r"^```(?:python|toml)\n(.*?)^```", EXTENDING.read_text(), flags=re.S | re.M):
        first, _, rest = block.partition("\n")
        name = re.match(r"^# ([\w/.]+\.(?:py|toml))$", first)
        if name:
            files[name.group(1)] = block
    return files


def test_the_extending_page_shows_the_whole_package() -> None:
    assert set(example_files()) == {"pyproject.toml", "catsdogs_extras/lion.py", "catsdogs_extras/tinynet.py",
                                    "catsdogs_extras/schedule.py", "catsdogs_extras/augment.py",
                                    "catsdogs_extras/cli.py"}


def read_toml_strings(text: str) -> dict[str, dict[str, str]]:
    """The `key = "string"` pairs of a plain TOML file, by table header (quotes dropped from the header).

    Enough for the page's pyproject.toml. Python 3.10, which the project supports, has no tomllib, and a test
    is no reason to add a dependency.
    """
    tables: dict[str, dict[str, str]] = {}
    table = None
    for line in text.splitlines():
        header = re.match(r"^\[([^\[\]]+)\]\s*$", line)
        pair = re.match(r'^([\w.-]+)\s*=\s*"([^"]*)"\s*$', line)
        if header:
            table = tables.setdefault(header.group(1).replace('"', ""), {})
        elif pair and table is not None:
            table[pair.group(1)] = pair.group(2)
    return tables


def test_the_toml_reader_reads_the_page_s_pyproject() -> None:
    text = example_files()["pyproject.toml"]
    tables = read_toml_strings(text)
    assert tables["project"] == {"name": "catsdogs-extras", "version": "0.1.0"}  # the list of dependencies is no string
    assert tables[f"project.entry-points.{ENTRY_POINT_GROUP}"] == {"lion": "catsdogs_extras.lion"}
    assert tables["project.scripts"] == {"catsdogs-extras": "catsdogs_extras.cli:main"}
    if sys.version_info >= (3, 11):  # where the standard library can read TOML, it reads the same
        import tomllib
        project = tomllib.loads(text)["project"]
        assert project["entry-points"] == {ENTRY_POINT_GROUP: tables[f"project.entry-points.{ENTRY_POINT_GROUP}"]}
        assert (project["name"], project["scripts"]) == ("catsdogs-extras", tables["project.scripts"])


def write_example_package(root: Path) -> Path:
    """The page's package, with the metadata `pip install` would write for its entry points."""
    for name, text in example_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "catsdogs_extras" / "__init__.py").write_text("")
    tables = read_toml_strings((root / "pyproject.toml").read_text())
    project = tables["project"]
    info = root / "catsdogs_extras-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = {**{name.removeprefix("project.entry-points."): entries for name, entries in tables.items()
                 if name.startswith("project.entry-points.")}, "console_scripts": tables["project.scripts"]}
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items()) + "\n"
        for group, entries in groups.items()))
    return root


def test_the_extending_page_works(tmp_path: Path, tiny_split) -> None:
    """The page's package registers all four kinds, under the page's module paths, and trains with them."""
    package = write_example_package(tmp_path / "plugin")
    assert ENTRY_POINT_GROUP in (package / "catsdogs_extras-0.1.0.dist-info" / "entry_points.txt").read_text()
    data = tiny_split(tmp_path, per_class=(8, 4, 4), size=64)

    def run(cli: str, *commands: list[str]) -> str:
        """Run commands of `cli` (a module holding the click group `main`) in one fresh process."""
        script = f"from {cli} import main\n" + "".join(f"main({args!r}, standalone_mode=False)\n" for args in commands)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path, env={"PYTHONPATH": f"{ROOT}:{package}", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Plain catsdogs finds the optimizer through the entry point, and only the optimizer.
    plain = run("catsdogs.cli", ["optimizers"], ["models", "--image-size", "64"])
    assert "catsdogs_extras.lion.Lion: lr=0.0001, batch_size=64" in plain and "tinynet" not in plain
    # The package's own command knows the rest, and trains and evaluates with all four.
    extras = run("catsdogs_extras.cli", ["models", "--image-size", "64"], ["schedulers"], ["augments"],
                 ["train", "--optim", "lion", "--model", "tinynet", "--scheduler", "linear", "--augment", "gray",
                  "--image-size", "64", "--epochs", "2", "--lr", "0.001", "--data", str(data), "--device", "cpu",
                  "--precision", "fp32"], ["evaluate", "runs/lion"])
    assert re.search(r"^tinynet .* two conv blocks, 16-32 channels$", extras, flags=re.M)
    assert "linear     Straight down from the base rate to zero." in extras
    assert "gray             A random 20% of the photos in gray." in extras
    assert "model tinynet at 64px, optimizer lion (lr 0.001, batch 64), 2 epochs" in extras
    assert "wrote runs/lion/metrics.json" in extras

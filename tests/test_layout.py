"""The package's layout: stage folders, imports that run one way (cli -> study -> ... -> helpers), no cycles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "catsdogs"
# The stages of the pipeline, lowest first: a module may import from its own stage or one below.
STAGES = {"helpers": 0, "data": 1, "training": 2, "inference": 3, "study": 4, "cli": 5}
ENTRY = {"catsdogs.cli", "catsdogs.__main__", "catsdogs.process"}  # process: the entry points' set-up
# Old import paths kept for users, each re-exporting its module's new home (the README's plugin
# example imports catsdogs.optim): these may import upward, and only from that home.
ALIASES = {"catsdogs.optim": "catsdogs.training.optim"}
HELPERS = {"catsdogs", "catsdogs.atomic", "catsdogs.cpus", "catsdogs.errors", "catsdogs.figures",
           "catsdogs.interrupts", "catsdogs.names", "catsdogs.progress", "catsdogs.registry"}

Edge = tuple[str, str, str]  # importer, imported, where: "catsdogs/data/cache.py:12"


def find_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package`."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def stage(module: str) -> str:
    """The stage a module belongs to: its folder under catsdogs/, or helpers / cli at the top."""
    if module in ENTRY:
        return "cli"
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        assert parts[1] in STAGES, f"{module}: catsdogs/{parts[1]}/ is not a stage of the pipeline"
        return parts[1]
    return "helpers"


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every catsdogs module `path` imports, at any depth (inside functions too), with its line."""
    shown = path.relative_to(modules["catsdogs"].parent.parent)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` names module a.b when there is one, else something defined in a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import a.b.c of a name c: the module is a.b
                target = target.rpartition(".")[0]
            if target.split(".")[0] == "catsdogs" and target != module:
                found.append((module, target, f"{shown}:{node.lineno}"))
    return found


def all_imports(package: Path = PACKAGE) -> list[Edge]:
    modules = find_modules(package)
    return [edge for module, path in modules.items() for edge in imports_of(module, path, modules)]


def upward_imports(edges: list[Edge]) -> list[str]:
    problems = []
    for importer, imported, where in edges:
        if ALIASES.get(importer) == imported:
            continue
        if STAGES[stage(imported)] > STAGES[stage(importer)]:
            problems.append(f"{where}: {importer} (stage {stage(importer)}) "
                            f"imports {imported} (stage {stage(imported)}), a stage above its own")
    return problems


def import_cycles(edges: list[Edge]) -> list[str]:
    """Each cycle as `a -> b -> a`, with the file and line of every import in it (Tarjan's SCCs)."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for importer, imported, where in edges:
        graph[importer].setdefault(imported, where)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats: that is a cycle
            step = next(n for n in sorted(graph[path[-1]]) if n in members)
            if step in seen:
                loop = path[path.index(step):] + [step]
                where = ", ".join(graph[a][b] for a, b in zip(loop, loop[1:]))
                cycles.append(f"{' -> '.join(loop)} ({where})")
                break
            path.append(step)
            seen.add(step)
    return cycles


def test_the_stage_folders_exist() -> None:
    for name in ("data", "training", "inference", "study"):
        assert (PACKAGE / name / "__init__.py").is_file(), f"catsdogs/{name}/ is missing"


def test_the_top_level_holds_only_the_shared_helpers_and_the_entry_points() -> None:
    top = {name for name in find_modules() if name.count(".") <= 1 and stage(name) in ("helpers", "cli")}
    assert top == HELPERS | ENTRY | set(ALIASES), "a new top-level module: is it used by every stage?"


def test_no_module_imports_from_a_stage_above_its_own() -> None:
    problems = upward_imports(all_imports())
    assert not problems, "\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    cycles = import_cycles(all_imports())
    assert not cycles, "\n" + "\n".join(cycles)


def test_the_aliases_re_export_their_new_home() -> None:
    modules = find_modules()
    for alias, home in ALIASES.items():
        edges = imports_of(alias, modules[alias], modules)
        assert {imported for _, imported, _ in edges} == {home}, alias


def test_every_module_starts_with_a_one_line_summary() -> None:
    missing = []
    for name, path in find_modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        lines = (doc or "").splitlines()
        if not lines or not lines[0].strip() or (len(lines) > 1 and lines[1].strip()):
            missing.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
    assert not missing, "no one-line docstring at the top of:\n" + "\n".join(missing)


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above on a small package that breaks both rules."""
    fake = tmp_path / "catsdogs"
    for folder, text in {"": "", "data": "", "study": ""}.items():
        (fake / folder).mkdir(parents=True, exist_ok=True)
        (fake / folder / "__init__.py").write_text(text)
    (fake / "data" / "images.py").write_text("def f():\n    from catsdogs.study.report import x\n")
    (fake / "study" / "report.py").write_text("from catsdogs.study import figures\nx = 1\n")
    (fake / "study" / "figures.py").write_text("from . import report\n")
    edges = all_imports(fake)
    assert upward_imports(edges) == [
        "catsdogs/data/images.py:2: catsdogs.data.images (stage data) imports catsdogs.study.report (stage study), "
        "a stage above its own"]
    assert import_cycles(edges) == ["catsdogs.study.figures -> catsdogs.study.report -> catsdogs.study.figures "
                                    "(catsdogs/study/figures.py:1, catsdogs/study/report.py:1)"]


def test_test_modules_share_code_only_through_the_helper_modules() -> None:
    """Shared test code lives in helper modules (tests/helpers.py, tests/browser.py, ...): a test module never
    imports another test module or a conftest."""
    tests = PACKAGE.parent / "tests"
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(tests.parent)}:{node.lineno} imports {name}" for name in names
                      if name.split(".")[0] == "tests"
                      and name.split(".")[-1].startswith(("test_", "conftest"))]
    assert not found, "\n".join(found)

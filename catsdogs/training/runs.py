"""Run folders: choosing a fresh one, finding the most recent, and resolving checkpoints."""

from __future__ import annotations

import shlex
from pathlib import Path

from catsdogs.errors import CatsdogsError

RUNS_ROOT = Path("runs")
RUN_MARKER = "config.yaml"


def new_run_dir(path: str | Path) -> Path:
    """Create `path`, or `path-2`, `path-3`, ... when it exists: a new run never reuses a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


def _activity(run: Path) -> float:
    return max((run / name).stat().st_mtime for name in ("config.yaml", "history.csv", "last.pt")
               if (run / name).exists())


def list_runs(root: str | Path = RUNS_ROOT) -> list[Path]:
    """Run folders (holding config.yaml) under `root`, at any depth, oldest activity first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [marker.parent for marker in root.rglob(RUN_MARKER)]
    return sorted(runs, key=lambda run: (_activity(run), str(run)))


def latest_run(root: str | Path = RUNS_ROOT) -> Path:
    """The run with the most recent activity among those with a checkpoint (any run when none has one):
    a run stopped before its first save has nothing to evaluate, plot or resume."""
    runs = list_runs(root)
    if not runs:
        raise CatsdogsError(f"no runs under {root}/: train one with `catsdogs train --optim adam`, "
                            "or name a run folder")
    saved = [run for run in runs if (run / "last.pt").is_file() or (run / "best.pt").is_file()]
    return (saved or runs)[-1]


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """`best`, `last` or a path to a .pt file; a run without it gives a clear error."""
    if which in ("best", "last"):
        path = run_dir / f"{which}.pt"
        if which == "best" and not path.is_file() and (run_dir / "last.pt").is_file():
            resume = f"catsdogs train --resume {shlex.quote(str(run_dir))}"
            raise CatsdogsError(f"{run_dir} has no best.pt yet (it stopped before finishing an epoch): use "
                                f"--checkpoint last for its latest weights, or `{resume}`")
        if not path.is_file():
            raise CatsdogsError(f"{run_dir} has no {which}.pt: has its training finished an epoch?")
        return path
    path = Path(which)
    if not path.is_file():
        raise CatsdogsError(f"checkpoint {path} does not exist (use best, last or a .pt file)")
    return path

"""The split's output folder: checked before use, left alone when up to date, else staged and swapped in."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catsdogs.errors import CatsdogsError
from catsdogs.interrupts import ctrl_c_deferred
from catsdogs.names import unescape_name

# The files split writes besides the photos; the re-run check reads the first and the last.
MANIFEST = "manifest.csv"
REJECTED_CSV = "rejected.csv"
RECORD = "split.json"
# `catsdogs train` keeps decoded arrays in OUT/.cache (catsdogs.data.CACHE_DIR, not imported
# here because it pulls in torch): derived from the split, so neither foreign nor worth keeping.
TRAIN_CACHE = ".cache"


def check_out(source: Path, out: Path) -> None:
    """Refuse an `out` (resolved, like `source`) that split must not write or, with --force, delete."""
    if out == source or out.is_relative_to(source):
        raise CatsdogsError(f"--out {str(out)!r} is inside the source {str(source)!r}: the split would "
                            f"be read back as photos; choose an --out outside it")
    if source.is_relative_to(out):
        raise CatsdogsError(f"the source {str(source)!r} is inside --out {str(out)!r}, which split "
                            f"replaces: choose an --out outside the source")
    if Path.cwd().resolve().is_relative_to(out) or out == Path.home().resolve():
        # --force deletes the old folder; never let that be the one the user works in.
        raise CatsdogsError(f"--out {str(out)!r} holds the current or home folder: choose a new folder, such as data")
    if out.exists() and not out.is_dir():
        raise CatsdogsError(f"--out {str(out)!r} is a file, not a folder: choose another --out")


def _work_folders(out: Path, kind: str) -> list[tuple[Path, int]]:
    """Staging or old folders of `out` left beside it, with the id of the process that made them."""
    found = []
    if out.parent.is_dir():
        for path in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = path.name[len(out.name) + len(kind) + 3:].split("-", 1)[0]
            if pid.isdigit():
                found.append((path, int(pid)))
    return sorted(found)


def left_by_dead_run(path: Path, pid: int) -> bool:
    """True when the run that made `path` (a folder or file named with its process id) has ended,
    so `path` is a leftover."""
    if pid == os.getpid():
        return True  # this run has made none yet: an earlier process had the same id
    if os.name != "posix":
        # os.kill(pid, 0) would terminate the process on Windows; go by age instead.
        return time.time() - path.stat().st_mtime > 24 * 3600
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_work_folders(out: Path) -> None:
    """Clean up after killed runs: delete their staging folders and put back an `out` they moved."""
    for path, pid in _work_folders(out, "staging"):
        if left_by_dead_run(path, pid):
            shutil.rmtree(path, ignore_errors=True)
    for path, pid in _work_folders(out, "old"):
        if left_by_dead_run(path, pid):
            # Killed between moving the old split aside and moving the new one in.
            if out.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, out)


def check_existing(out: Path, record: dict, force: bool) -> dict | None:
    """Return the stored summary when `out` already holds this split; refuse an `out` made otherwise.

    `force` replaces only a folder this command made and holding nothing else: a folder of the
    user's (a mistyped --out naming runs/, say) is never deleted.
    """
    if not out.exists():
        return None
    try:
        previous = json.loads((out / RECORD).read_text(encoding="utf-8", errors="surrogateescape"))
        rows = _read_csv(out / MANIFEST)
        expected = {row["file"] for row in rows} | {MANIFEST, REJECTED_CSV, RECORD}
        stored_arguments, stored_summary = dict(previous["arguments"]), dict(previous["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        if not any(out.iterdir()):
            return None
        raise CatsdogsError(f"--out {str(out)!r} already exists and was not made by catsdogs split: choose "
                            f"another --out (split deletes no folder it did not make, even with --force)") from None
    present = {path.relative_to(out).as_posix() for path in out.rglob("*") if not path.is_dir()}
    present = {path for path in present if not path.startswith(f"{TRAIN_CACHE}/")}
    foreign = sorted(present - expected)
    if foreign:
        raise CatsdogsError(f"--out {str(out)!r} holds {len(foreign)} file(s) that split did not write "
                            f"(e.g. {foreign[0]}): move them out, or choose another --out")
    if force:
        changed_photos = _replaced_photos(out, Path(unescape_name(str(previous.get("source", "")))), rows)
        if changed_photos:
            raise CatsdogsError(f"--out {str(out)!r} holds {len(changed_photos)} photo(s) that are no longer what "
                                f"split wrote there (e.g. {changed_photos[0]}): move them out, or choose another "
                                f"--out (--force deletes only what split wrote)")
        return None
    changed = [f"{key} {stored_arguments.get(key)} (now {value})"
               for key, value in record["arguments"].items() if stored_arguments.get(key) != value]
    if previous.get("source") != record["source"]:
        changed.insert(0, f"source {previous.get('source')} (now {record['source']})")
    if previous.get("format") != record["format"]:
        changed.append(f"record format {previous.get('format')} (now {record['format']})")
    if changed:
        raise CatsdogsError(f"--out {str(out)!r} was split with other arguments: {'; '.join(changed)}. "
                            f"Pass --force to replace it, or choose another --out")
    if previous.get("source_fingerprint") != record["source_fingerprint"]:
        raise CatsdogsError(f"the source {record['source']!r} changed since --out {str(out)!r} was split "
                            f"(files added, removed or modified): pass --force to split it again")
    if expected - present:
        return None  # files of ours went missing: rebuild, nothing foreign is lost
    for key in ("rejected", "skipped"):  # JSON turned the (path, reason) pairs into lists
        stored_summary[key] = [tuple(item) for item in stored_summary.get(key, [])]
    return stored_summary


def _replaced_photos(out: Path, source: Path, rows: list[dict]) -> list[str]:
    """Files under split's names whose deletion would lose something: neither a link nor what split wrote.

    A symbolic link, or a hard link to the source photo, holds nothing the source lacks; a copy
    is compared with the manifest's hash, so only copy mode reads the photos again.
    """
    replaced = []
    for row in rows:
        path = out / row["file"]
        try:
            if path.is_symlink():
                continue
            stat = path.stat()
            try:
                original = (source / unescape_name(row["path"])).stat()  # the manifest escapes names
                if (stat.st_dev, stat.st_ino) == (original.st_dev, original.st_ino):
                    continue
            except OSError:
                pass  # the source photo is gone: only the hash can tell
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue  # missing or unreadable: nothing to lose by replacing it
        if row.get("sha256") and digest != row["sha256"]:
            replaced.append(row["file"])
    return replaced


@contextmanager
def write_atomically(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; when the block ends, swap it into place as `out`.

    If the block fails (Ctrl-C included), the staging folder is deleted and a previous `out`
    stays as it was; an OSError becomes a CatsdogsError that names `out`.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside `out`, so the final rename stays on one file system and is atomic. A plain mkdir,
    # not mkdtemp (always 0700), so that `out` gets the mode the umask gives, readable by others.
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    old = None
    try:
        yield staging
        if out.exists():
            # Two renames, not one atomic swap (not portable); a kill between them is undone
            # by the next run, which renames `old` back (see recover_work_folders).
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
        os.rename(staging, out)
    except BaseException as error:
        # Leave no half-written split behind, and the previous one in place.
        with ctrl_c_deferred():
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None and old.exists() and not out.exists():
                os.rename(old, out)
        if isinstance(error, OSError):
            raise CatsdogsError(f"could not write the split beside {str(out)!r}: {error}; "
                                f"check free space and permissions") from error
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def place_file(source_file: Path, target: Path, mode: str) -> bool:
    """Put one photo at `target`; return True when a hard link had to fall back to a copy."""
    if mode == "symlink":
        os.symlink(os.path.realpath(source_file), target)
        return False
    if mode == "link":
        try:
            os.link(source_file, target)
            return False
        except OSError:
            pass  # another file system, or one without hard links: copy instead
    shutil.copyfile(source_file, target)
    return mode == "link"


def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        return list(csv.DictReader(file))

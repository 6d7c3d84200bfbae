"""Which files under a source folder are usable photos: a link-safe walk and a full decode of each."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageFile, UnidentifiedImageError

from catsdogs.data.images import HIDDEN_FILE, HIDDEN_FOLDER, MIN_SIDE, TooSmall, is_hidden, is_image_name, load_rgb
from catsdogs.errors import first_line
from catsdogs.interrupts import ctrl_c_deferred, first_ctrl_c_only, ignore_ctrl_c
from catsdogs.progress import progress_bar

# How a file that is not used is filed in rejected.csv (the `status` column).
REJECTED = "rejected"  # meant to be a photo, but broken or unsafe
SKIPPED = "skipped"  # never meant to be a photo (Thumbs.db, notes, a folder link)
DUPLICATE = "duplicate"
CONFLICT = "conflict"

# Reasons (the `reason` column); summaries group files by these exact strings.
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
CORRUPT = "truncated or corrupt data"
BOMB = "decompression bomb"
TOO_SMALL = f"under {MIN_SIDE} pixels on a side"
UNREADABLE = "unreadable"
DANGLING_LINK = "dangling link"
LINK_OUTSIDE = "link points outside the source"
LINK_LOOP = "link loop"
FOLDER_LINK = "link to a folder inside the source (its files are read there)"
NOT_IMAGE_FILE = "not an image file"
NOT_REGULAR = "not a regular file"


@dataclass(frozen=True)
class LeftOut:
    """One file that is not in the split, and why; a row of rejected.csv."""

    path: str  # relative to the source, with forward slashes
    status: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class SourceScan:
    """What a walk of the source found: image-named files, files left out, and a fingerprint."""

    images: list[str]
    left_out: list[LeftOut]
    fingerprint: str  # changes when any file is added, removed, resized or touched


class ImageCheck(NamedTuple):
    """The verdict on one file; `reason` is None for a usable photo."""

    reason: str | None
    detail: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Photo:
    """A photo that decoded cleanly, with its label and what the manifest records about it."""

    path: str
    label: str
    sha256: str
    width: int
    height: int


def scan_source(source: Path) -> SourceScan:
    """Walk `source` (already resolved) in sorted order without following folder links.

    Following a folder link could leave the source or loop forever, and a link to a folder
    inside the source would only read the same files twice. File links are kept when they
    resolve to a regular file inside the source.
    """
    images: list[str] = []
    left_out: list[LeftOut] = []
    stamps: list[str] = []
    pending = [source]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            rel = folder.relative_to(source).as_posix()
            left_out.append(LeftOut(rel, REJECTED, UNREADABLE, error.strerror or str(error)))
            continue
        for entry in entries:
            rel = Path(entry.path).relative_to(source).as_posix()
            if entry.is_dir(follow_symlinks=False):
                if is_hidden(entry.name):
                    # Not in the fingerprint: Finder and Jupyter rewrite these while nothing else changes.
                    left_out.append(LeftOut(rel, SKIPPED, HIDDEN_FOLDER))
                else:
                    pending.append(Path(entry.path))
                continue
            if is_hidden(entry.name):
                left_out.append(LeftOut(rel, SKIPPED, HIDDEN_FILE))
                continue
            problem = _link_problem(Path(entry.path), source) if entry.is_symlink() else None
            if problem is not None:
                left_out.append(problem)
                stamps.append(f"{rel}\t->{os.readlink(entry.path)}")
                continue
            try:
                info = os.stat(entry.path)
            except OSError as error:
                left_out.append(LeftOut(rel, REJECTED, UNREADABLE, error.strerror or str(error)))
                continue
            stamps.append(f"{rel}\t{info.st_size}\t{info.st_mtime_ns}")
            if not stat.S_ISREG(info.st_mode):
                # Opening a FIFO or a device would block or never end.
                left_out.append(LeftOut(rel, SKIPPED, NOT_REGULAR))
            elif is_image_name(entry.name):
                images.append(rel)
            else:
                left_out.append(LeftOut(rel, SKIPPED, NOT_IMAGE_FILE))
    # surrogateescape: names that are not valid UTF-8 (old zips) must not crash the split.
    fingerprint = hashlib.sha256("\n".join(sorted(stamps)).encode("utf-8", "surrogateescape")).hexdigest()
    return SourceScan(sorted(images), sorted(left_out, key=lambda item: item.path), fingerprint)


def _link_problem(link: Path, source: Path) -> LeftOut | None:
    """Why the symbolic link `link` is not followed, or None for a link to a file in the source."""
    rel = link.relative_to(source).as_posix()
    try:
        os.stat(link)
    except OSError as error:
        reason = LINK_LOOP if error.errno == errno.ELOOP else DANGLING_LINK
        return LeftOut(rel, REJECTED if reason == DANGLING_LINK else SKIPPED, reason)
    target = Path(os.path.realpath(link))
    if not target.is_relative_to(source):
        return LeftOut(rel, REJECTED, LINK_OUTSIDE, str(target))
    if target.is_dir():
        if link.parent.is_relative_to(target):
            return LeftOut(rel, SKIPPED, LINK_LOOP, target.relative_to(source).as_posix() or ".")
        return LeftOut(rel, SKIPPED, FOLDER_LINK)
    return None


def check_image(path: str) -> ImageCheck:
    """Hash the file and decode it completely, the way training will read it.

    A header check or `Image.verify()` would pass a truncated JPEG; only decoding every
    pixel finds it. Runs in worker processes, so it returns a small picklable tuple.
    """
    try:
        file = open(path, "rb")
    except OSError as error:
        return ImageCheck(UNREADABLE, error.strerror or str(error), "", 0, 0)
    with file:
        digest = hashlib.sha256()
        try:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        except OSError as error:
            return ImageCheck(UNREADABLE, error.strerror or str(error), "", 0, 0)
        sha256 = digest.hexdigest()
        if file.tell() == 0:
            return ImageCheck(EMPTY, "", sha256, 0, 0)
        file.seek(0)
        try:
            # Decoded as training reads it: EXIF rotation and RGB conversion must work too.
            width, height = load_rgb(file).size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            return ImageCheck(BOMB, first_line(error), sha256, 0, 0)
        except UnidentifiedImageError:
            return ImageCheck(NOT_AN_IMAGE, "no image format recognised", sha256, 0, 0)
        except TooSmall as error:
            return ImageCheck(TOO_SMALL, str(error), sha256, 0, 0)
        except Exception as error:  # noqa: BLE001 - decoders raise many types on bad data
            return ImageCheck(CORRUPT, first_line(error), sha256, 0, 0)
    return ImageCheck(None, "", sha256, width, height)


def _init_worker() -> None:
    # Ctrl-C is for the parent, which then ends the workers itself (see _stop_workers).
    ignore_ctrl_c()
    # Another module may have relaxed this for training; truncation must stay an error here.
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def check_images(paths: list[str], jobs: int, progress: bool = True) -> list[ImageCheck]:
    """Run `check_image` on every path, in `jobs` processes; results keep the order of `paths`."""
    bar = progress_bar(total=len(paths), desc="Decoding images", unit="img", show=progress)
    with bar:
        if jobs == 1 or len(paths) < 2:
            relaxed, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
            try:
                results = []
                for path in paths:
                    results.append(check_image(path))
                    bar.update()
                return results
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = relaxed
        # Chunks amortise the inter-process round trip without starving the progress bar.
        chunksize = max(1, min(64, len(paths) // (jobs * 8)))
        executor = ProcessPoolExecutor(max_workers=min(jobs, len(paths)), initializer=_init_worker)
        with first_ctrl_c_only():
            try:
                # The workers start here; a forked one keeps this deferral until _init_worker ignores Ctrl-C.
                with ctrl_c_deferred():
                    checks = executor.map(check_image, paths, chunksize=chunksize)
                results = []
                for result in checks:
                    results.append(result)
                    bar.update()
                executor.shutdown(wait=True)
                return results
            except BaseException:
                _stop_workers(executor)
                raise


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """End the workers now, whatever they are doing, and wait until they are gone.

    A graceful shutdown would let each finish its chunk, and a second Ctrl-C during it left
    the pool's queues locked: the parent and its workers then waited on each other forever.
    """
    with ctrl_c_deferred():
        # No public way to reach them before Python 3.14's executor.terminate_workers().
        for process in list((executor._processes or {}).values()):
            process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)


def deduplicate(photos: list[Photo]) -> tuple[list[Photo], list[LeftOut]]:
    """Keep one photo per content hash; the same bytes under two classes are all left out."""
    by_hash: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:  # already sorted by path, so the kept copy is the first by path
        by_hash[photo.sha256].append(photo)
    kept, removed = [], []
    for group in by_hash.values():
        labels = sorted({photo.label for photo in group})
        if len(labels) > 1:
            for photo in group:
                others = ", ".join(f"{other.path} ({other.label})" for other in group if other is not photo)
                removed.append(LeftOut(photo.path, CONFLICT, "label conflict", f"same bytes as {others}"))
            continue
        kept.append(group[0])
        removed += [LeftOut(photo.path, DUPLICATE, "duplicate", f"same bytes as {group[0].path}")
                    for photo in group[1:]]
    return sorted(kept, key=lambda photo: photo.path), removed

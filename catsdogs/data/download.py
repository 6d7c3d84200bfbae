"""Fetch Microsoft's "Kaggle Cats and Dogs" archive, resuming and verifying it, and extract it safely.

Only the standard library and tqdm: urllib for HTTP (with `Range` to resume), hashlib to check
the archive, zipfile to read it. Nothing is printed here apart from tqdm's progress bars on a
terminal's stderr; the caller reports the returned `DownloadResult`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import os
import shutil
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from catsdogs.errors import CatsdogsError
from catsdogs.progress import progress_bar

# Linked from https://www.microsoft.com/en-us/download/details.aspx?id=54765 and used by
# TensorFlow Datasets and Hugging Face `cats_vs_dogs`; size and SHA-256 are the ones recorded in
# huggingface/datasets datasets/cats_vs_dogs/dataset_infos.json (wget logs show the same length).
PETIMAGES_URL = (
    "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
    "kagglecatsanddogs_5340.zip"
)
PETIMAGES_SIZE: int | None = 824_887_076
PETIMAGES_SHA256: str | None = "b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9"

PETIMAGES_DIR = "PetImages"
CLASS_DIRS = ("Cat", "Dog")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadResult:
    """What `download_petimages` did: where the images are and which steps it had to run."""

    path: Path  # dest/PetImages, holding Cat/ and Dog/
    archive: Path | None  # the kept zip, or None when PetImages was already there without it
    downloaded: bool  # bytes were fetched over the network by this call
    extracted: bool  # PetImages was created by this call


def download_petimages(
    dest: str | os.PathLike = ".",
    url: str = PETIMAGES_URL,
    expected_size: int | None = PETIMAGES_SIZE,
    sha256: str | None = PETIMAGES_SHA256,
    progress: bool = True,
    timeout: float = 60.0,
) -> DownloadResult:
    """Make sure `dest/PetImages` holds the extracted archive and return where it is.

    Steps, each skipped when its result is already there:
    1. If `dest/PetImages` has non-empty `Cat/` and `Dog/` folders, nothing is done.
    2. The archive is downloaded to `dest/<name>.zip.part`; an existing `.part` is resumed with
       `Range: bytes=N-` (a server that ignores Range and answers 200 restarts it from zero).
       Only when its size (and SHA-256, when given) match is it renamed to `dest/<name>.zip`.
    3. The archive is checked member by member (no absolute paths, no `..`, no links), extracted
       into a hidden staging folder in `dest`, then moved to `dest/PetImages` with `os.replace`,
       so a failure leaves no half-written `PetImages`. The archive's `PetImages/` folder maps to
       `dest/PetImages`; its top-level files (the licence and readme) go inside it too, so the
       licence travels with the images.

    The zip is kept after extraction (`result.archive`, about 787 MB for the real one) so that
    extracting again never needs the network; delete it by hand once `PetImages` is in place.
    Every failure is a CatsdogsError with a one-line message; nothing the user had is deleted,
    and a folder this call created is removed again when the failure leaves it empty.
    """
    dest = Path(dest)
    target = dest / PETIMAGES_DIR
    archive = dest / _archive_name(url)
    if target.exists():
        if _looks_complete(target):
            return DownloadResult(target, archive if archive.is_file() else None, False, False)
        raise CatsdogsError(
            f"{target} exists but lacks non-empty {' and '.join(CLASS_DIRS)} folders; "
            "move it away (or delete it) and run the download again"
        )
    made = list(itertools.takewhile(lambda folder: not folder.exists(), [dest, *dest.parents]))
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CatsdogsError(f"cannot create {dest}: {error.strerror or error}") from error

    part = archive.with_name(archive.name + ".part")
    downloaded = False
    try:
        if archive.is_file():
            # A .zip only ever appears here after verification, or because the user put it there.
            _verify(archive, expected_size, sha256, what_next=f"move {archive} away and run the download again")
        else:
            announced = _fetch(url, part, expected_size, progress, timeout)
            downloaded = True
            _verify(
                part,
                expected_size if expected_size is not None else announced,
                sha256,
                what_next=f"delete {part} and run the download again to fetch it afresh",
                if_short="run the download again to resume it",
            )
            os.replace(part, archive)
        _extract(archive, target, progress)
    except BaseException:
        _remove_what_holds_nothing(part, made)
        raise
    return DownloadResult(target, archive, downloaded, True)


def _remove_what_holds_nothing(part: Path, made: list[Path]) -> None:
    """After a failure, remove an empty `.part` and the folders in `made` (deepest first) left empty.

    A `.part` with bytes in it stays for the next run to resume, and so does its folder.
    """
    with contextlib.suppress(OSError):
        if part.stat().st_size == 0:
            part.unlink()
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours to remove): nor are the folders above it
            break


def _archive_name(url: str) -> str:
    """The file name at the end of the URL, so a different mirror or version keeps its own name."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name if name.endswith(".zip") else "petimages.zip"


def _looks_complete(folder: Path) -> bool:
    """True when every class folder exists and holds at least one file."""
    for class_dir in CLASS_DIRS:
        sub = folder / class_dir
        if not sub.is_dir() or not any(child.is_file() for child in sub.iterdir()):
            return False
    return True


def _fetch(url: str, part: Path, expected_size: int | None, progress: bool, timeout: float) -> int | None:
    """Append the missing bytes of `url` to `part`; return the total size the server announced."""
    have = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and have >= expected_size:
        return None  # nothing left to ask for; _verify judges what is there
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise CatsdogsError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})

    def failure(reason: object) -> CatsdogsError:
        if isinstance(reason, OSError):
            reason = reason.strerror or str(reason) or type(reason).__name__  # no "[Errno 111]"
        kept = part.stat().st_size if part.is_file() else 0
        where = f" ({kept} bytes kept in {part})" if kept else ""
        return CatsdogsError(
            f"download of {url} failed ({reason}); check the connection and run the download "
            f"again, it resumes where it stopped{where}"
        )

    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return None  # "range not satisfiable": the .part already holds the whole file
        raise failure(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise failure(error.reason) from error
    except (OSError, http.client.HTTPException) as error:
        raise failure(error) from error

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != have:
                raise failure(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:
            # The server ignored Range and sends the whole file: start the .part over.
            start, total, mode = 0, length, "wb"
        if total is None and length is not None:
            total = start + length
        received = 0
        try:
            with open(part, mode) as out, progress_bar(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), show=progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            # ConnectionResetError, TimeoutError, ...: what arrived stays in .part.
            raise failure(error) from error
        # read(n) returns b"" when the peer closes early instead of raising IncompleteRead.
        if length is not None and received < length:
            raise failure(f"connection closed after {received} of {length} bytes")
    return total


def _parse_content_range(value: str) -> tuple[int | None, int | None]:
    """Start and total of a `bytes START-END/TOTAL` header (None where absent or `*`)."""
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.partition("-")[0]) if unit == "bytes" else None
        return start, int(total) if total.isdigit() else None
    except ValueError:
        return None, None


def _verify(
    path: Path, expected_size: int | None, sha256: str | None, what_next: str, if_short: str | None = None
) -> None:
    """Raise CatsdogsError unless `path` has the expected size and SHA-256 (None skips a check).

    Nothing is deleted here: the message says what to do (`if_short` when too few bytes arrived).
    """
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        hint = if_short if if_short and size < expected_size else what_next
        raise CatsdogsError(f"{path} is {size} bytes but should be {expected_size}; {hint}")
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256.lower():
            raise CatsdogsError(
                f"{path} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()}; {what_next}"
            )


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """Where a member goes relative to PetImages/, or None to refuse it (unsafe or a link)."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return None
    # Some Windows zippers write backslashes; treat them as separators so `..\\` is caught too.
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ":" in parts[0] or ".." in parts:
        return None
    relative = parts[1:] if parts[0] == PETIMAGES_DIR else parts
    return PurePosixPath(*relative) if relative else PurePosixPath(".")


def _extract(archive: Path, target: Path, progress: bool) -> None:
    """Extract `archive` into `target` via a staging folder, refusing any unsafe member."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            # Check every name before writing anything, so a bad archive writes nothing at all.
            plan = []
            for info in members:
                relative = _member_path(info)
                if relative is None:
                    raise CatsdogsError(
                        f"{archive} contains an unsafe member {info.filename!r} (absolute path, "
                        "'..' or link); refusing to extract it, delete the archive and download again"
                    )
                plan.append((info, relative))
            # Beside the target so os.replace is a rename on one filesystem; mkdir (unlike mkdtemp,
            # which makes it 0700) gives the folder the user's usual permissions.
            staging = target.with_name(f".{PETIMAGES_DIR}.partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)  # left by an earlier process with our pid
            staging.mkdir()
            try:
                root = staging.resolve()
                for info, relative in progress_bar(plan, desc="extracting", unit="file", show=progress):
                    out_path = staging / relative
                    # Belt and braces: the resolved path must still be inside the staging folder.
                    if not out_path.resolve().is_relative_to(root):
                        raise CatsdogsError(f"{archive} member {info.filename!r} escapes {target}; refusing it")
                    if info.is_dir():
                        out_path.mkdir(parents=True, exist_ok=True)
                        continue
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out_path, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                if not _looks_complete(staging):
                    raise CatsdogsError(
                        f"{archive} has no {PETIMAGES_DIR}/Cat and {PETIMAGES_DIR}/Dog images; "
                        "it is not the Cats and Dogs archive"
                    )
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise CatsdogsError(f"{archive} is not a valid zip ({error}); delete it and download again") from error
    except OSError as error:
        raise CatsdogsError(f"cannot extract {archive} into {target}: {error}") from error

"""Split a folder of labelled photos into train/val/test class folders: checked, deduplicated, reproducible."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import shlex
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from catsdogs.cpus import usable_cpus
from catsdogs.data import integrity, staging
from catsdogs.data.images import IMAGE_EXTENSIONS, NOT_IN_CLASS_FOLDER, is_hidden
from catsdogs.data.integrity import CONFLICT, DUPLICATE, LINK_OUTSIDE, REJECTED, SKIPPED, LeftOut, Photo
from catsdogs.data.staging import MANIFEST, RECORD, REJECTED_CSV
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.names import escape_name, escape_names, utf8
from catsdogs.progress import progress_bar

SPLITS = ("train", "val", "test")
LAYOUTS = ("auto", "folders", "kaggle")
MODES = ("link", "copy", "symlink")
# The tutorial's split: 30% test, 7% validation (10% of the remaining 70%), the rest training.
DEFAULT_RATIOS = (0.63, 0.07, 0.30)
NEXT_COMMAND = "catsdogs train --optim adam"

RECORD_FORMAT = 1
MANIFEST_COLUMNS = ("path", "class", "split", "sha256", "width", "height", "file")

# Kaggle "Dogs vs. Cats" train/ names carry the label: cat.123.jpg, dog.45.jpg.
# Other labels may carry digits, _ and - (ok_part.3.jpg); a name starting with a digit has none.
KAGGLE_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\..+\.[^.]+$")
NO_LABEL_IN_NAME = "no class label in the file name"
MODE_WORDS = {"link": "hard links", "copy": "copies", "symlink": "symbolic links"}


@dataclass
class SplitSummary:
    """What a split produced; `format()` is the report the CLI prints."""

    out: Path
    source: Path
    layout: str
    mode: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> number of photos
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source-relative path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates_removed: int = 0  # extra copies of the same bytes under one class
    conflicts: int = 0  # files left out because the same bytes sit under two classes
    found: int = 0  # every file the walk saw; kept + rejected + skipped + duplicates + conflicts
    copied: int = 0  # in link mode, files copied because a hard link was impossible
    unchanged: bool = False  # True when the run found the split already done

    @property
    def kept(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def format(self) -> str:
        """A human-readable report: counts per split and class, files left out, what to run next."""
        out = _display(self.out)
        how = MODE_WORDS[self.mode] + (f", {self.copied} copied across filesystems" if self.copied else "")
        if self.unchanged:
            lines = [f"{out} is already split from {_display(self.source)} with these arguments: nothing to do."]
        else:
            lines = [f"Split {self.kept} photos of {len(self.classes)} classes from "
                     f"{_display(self.source)} ({self.layout} layout) into {out} ({how})."]
        lines += ["", *_table(self.classes, self.counts), ""]
        left_out = self.found - self.kept
        lines.append(f"Left out {left_out} of {self.found} files." if left_out else "No file left out.")
        for title, items in (("Rejected", self.rejected), ("Skipped", self.skipped)):
            for reason, number in sorted(Counter(reason for _, reason in items).items()):
                lines.append(f"  {title}, {reason}: {number}")
        if self.duplicates_removed:
            lines.append(f"  Duplicates removed (same bytes, one copy kept): {self.duplicates_removed}")
        if self.conflicts:
            lines.append(f"  Label conflicts (same bytes under two classes, all copies out): {self.conflicts}")
        # Only a split recorded before such splits were refused (see _refuse_empty_splits) gets here.
        empty = [f"{split}/{name}" for split in SPLITS for name in self.classes if not self.counts[split][name]]
        if empty:
            lines.append(f"Warning: no photos in {', '.join(empty)}: too few photos for these ratios.")
        lines.append((f"Every file left out and why: {out}/{REJECTED_CSV}; every" if left_out else "Every")
                     + f" photo kept: {out}/{MANIFEST}.")
        # train reads ./data unless told otherwise.
        command = NEXT_COMMAND if self.out == Path("data").resolve() else f"{NEXT_COMMAND} --data {shlex.quote(out)}"
        lines += ["", f"Next: {command}"]
        return "\n".join(lines)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """Parse `--ratios` text such as "0.63,0.07,0.30" into checked (train, val, test) fractions."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--ratios {text!r} is not a list of numbers: write train,val,test "
                         f"fractions such as 0.63,0.07,0.30") from None
    return _check_ratios(values, text)


def _check_ratios(values: tuple[float, ...], shown: str) -> tuple[float, float, float]:
    if len(values) != 3:
        raise UsageError(f"--ratios {shown!r} has {len(values)} numbers; give three, train,val,test, "
                         f"such as 0.63,0.07,0.30")
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise UsageError(f"--ratios {shown!r}: train, val and test must each be above 0 (train validates every "
                         f"epoch; evaluate measures on test; to measure on photos elsewhere use "
                         f"`catsdogs evaluate RUN --data FOLDER`)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise UsageError(f"--ratios {shown!r} adds up to {sum(values):.6g}; the three fractions must add up to 1")
    return (float(values[0]), float(values[1]), float(values[2]))


def split_dataset(source: str | Path, out: str | Path = "data",
                  ratios: tuple[float, float, float] = DEFAULT_RATIOS, seed: int = 42,
                  layout: str = "auto", mode: str = "link", jobs: int | None = None,
                  force: bool = False, progress: bool = True) -> SplitSummary:
    """Check every photo in `source`, split each class by `ratios` into `out`, and report.

    The split is written to a staging folder beside `out` and renamed into place when complete,
    so an interrupted run leaves no `out` or the previous one. A re-run with the same source and
    arguments does nothing; an `out` made otherwise is refused unless `force` replaces it.
    """
    ratios = _check_ratios(tuple(ratios), ",".join(map(str, ratios)))
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r} is not one of: {', '.join(LAYOUTS)}")
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r} is not one of: {', '.join(MODES)}")
    jobs = usable_cpus() if jobs is None else jobs
    if jobs < 1:
        raise UsageError(f"--jobs {jobs} must be 1 or more (or left out to use every CPU this process may run on)")
    source, out = _check_paths(Path(source).expanduser(), Path(out).expanduser())
    staging.recover_work_folders(out)

    scan = integrity.scan_source(source)
    if not scan.images:
        raise _no_usable_photos(source, scan.left_out)
    labelled, layout, layout_skipped = _label(scan.images, layout, source)
    arguments = {"ratios": list(ratios), "seed": seed, "layout": layout, "mode": mode}
    record = {"format": RECORD_FORMAT, "source": escape_name(str(source)), "arguments": arguments,
              "source_fingerprint": scan.fingerprint}
    previous = staging.check_existing(out, record, force)
    if previous is not None:
        return SplitSummary(**{**previous, "out": out, "source": source, "unchanged": True})

    checks = integrity.check_images([str(source / rel) for rel, _ in labelled], jobs, progress)
    left_out = scan.left_out + layout_skipped
    photos = []
    for (rel, label), check in zip(labelled, checks):
        if check.reason is None:
            photos.append(Photo(rel, label, check.sha256, check.width, check.height))
        else:
            left_out.append(LeftOut(rel, REJECTED, check.reason, check.detail))
    photos, removed = integrity.deduplicate(photos)
    left_out = sorted(left_out + removed, key=lambda item: item.path)
    classes = sorted({photo.label for photo in photos})
    if len(classes) < 2:
        raise _too_few_classes(classes, source, left_out)

    rows = _assign(photos, classes, ratios, seed, layout)
    _refuse_empty_splits(rows, classes, ratios)
    summary = SplitSummary(
        out=out, source=source, layout=layout, mode=mode, classes=classes,
        counts={split: {name: 0 for name in classes} for split in SPLITS},
        rejected=[(escape_name(item.path), item.reason) for item in left_out if item.status == REJECTED],
        skipped=[(escape_name(item.path), item.reason) for item in left_out if item.status == SKIPPED],
        duplicates_removed=sum(item.status == DUPLICATE for item in left_out),
        conflicts=sum(item.status == CONFLICT for item in left_out),
        found=len(scan.images) + len(scan.left_out))
    for row in rows:
        summary.counts[row["split"]][row["class"]] += 1
    with staging.write_atomically(out) as folder:
        _write_split(folder, source, rows, left_out, summary, record, progress)
    return summary


def _check_paths(source: Path, out: Path) -> tuple[Path, Path]:
    if not source.exists():
        raise CatsdogsError(f"source folder {str(source)!r} does not exist: pass the folder that holds "
                            f"the photos (Cat/ and Dog/ subfolders, or Kaggle's cat.N.jpg files)")
    if not source.is_dir():
        raise CatsdogsError(f"source {str(source)!r} is a file, not a folder: pass the folder that holds the photos")
    source, out = source.resolve(), out.resolve()
    made_by_split = (source / RECORD).is_file() or (source / MANIFEST).is_file() or (
        {entry.name for entry in source.iterdir() if entry.is_dir() and not is_hidden(entry.name)}
        == set(SPLITS))
    if made_by_split:
        # Its train/val/test folders would become three classes.
        raise CatsdogsError(f"{str(source)!r} is a split folder (its folders are {', '.join(SPLITS)}), whose "
                            f"splits would become classes: pass the photos it was split from "
                            f"({_recorded_source(source)})")
    staging.check_out(source, out)
    return source, out


def _recorded_source(split_folder: Path) -> str:
    try:
        return str(json.loads((split_folder / RECORD).read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return "the folder of class subfolders"


def _label(images: list[str], layout: str, source: Path) -> tuple[list[tuple[str, str]], str, list[LeftOut]]:
    """Pair each image with its class by the folder layout or the Kaggle names; return the layout used."""
    nested = sum("/" in rel for rel in images)
    named = sum("/" not in rel and bool(KAGGLE_NAME.match(rel)) for rel in images)
    if layout == "auto":
        layout = "folders" if nested >= named else "kaggle"
        if layout == "folders":
            _refuse_kaggle_parent(images, source)
    labelled, skipped = [], []
    for rel in images:
        folder, _, name = rel.rpartition("/")
        if layout == "folders":
            # Escaped: the class is a folder of the split, and every name split writes is valid UTF-8.
            label = escape_name(rel.split("/", 1)[0]) if folder else None
            reason = NOT_IN_CLASS_FOLDER
        else:
            match = KAGGLE_NAME.match(name)
            # Capitalised so both layouts give the same class folders (Cat, Dog).
            label = match.group(1).capitalize() if match else None
            reason = NO_LABEL_IN_NAME
        if label is None:
            skipped.append(LeftOut(rel, SKIPPED, reason))
        else:
            labelled.append((rel, label))
    return labelled, layout, skipped


def _refuse_kaggle_parent(images: list[str], source: Path) -> None:
    # The Kaggle download unpacks to train/ (labelled) and test1/ (unlabelled); taking those
    # folders as classes would train a "train vs test1" classifier.
    labels_by_folder = defaultdict(set)
    for rel in images:
        folder, _, name = rel.partition("/")
        match = KAGGLE_NAME.match(name)
        labels_by_folder[folder].add(match.group(1).lower() if match and "/" not in name else None)
    for folder, labels in sorted(labels_by_folder.items()):
        # Cat/ holding cat.1.jpg and kitten.2.jpg is a class folder; train/ with cat and dog is not.
        if None not in labels and len(labels) >= 2 and folder.lower() not in labels:
            raise UsageError(f"{str(source / folder)!r} holds Kaggle-style names with their labels "
                             f"({', '.join(sorted(labels))}): pass that folder as the source, "
                             f"or --layout folders to use the subfolders as classes")


def allocate(total: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Split `total` items by `ratios`, each count within one item of total * ratio.

    Largest remainders give the within-one bound; then a split with a ratio above 0 but no
    item takes one from the most over-served split, but only when that keeps the bound.
    """
    targets = [total * ratio for ratio in ratios]
    counts = [math.floor(target) for target in targets]
    by_remainder = sorted(range(3), key=lambda i: (-(targets[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if ratios[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: (counts[j] - targets[j], -j))
            if counts[donor] >= 2 and counts[donor] > targets[donor]:
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def _assign(photos: list[Photo], classes: list[str], ratios: tuple[float, float, float],
            seed: int, layout: str) -> list[dict]:
    """Shuffle each class on its own and cut it by `ratios`; return the manifest rows, sorted."""
    rows = []
    for name in classes:
        members = [photo for photo in photos if photo.label == name]
        # Seeded per class, so a class's split does not depend on the other classes.
        random.Random(f"{seed}/{name}").shuffle(members)
        train, val, _ = allocate(len(members), ratios)
        file_names = _output_names(members, layout)
        for index, photo in enumerate(members):
            split = SPLITS[0] if index < train else SPLITS[1] if index < train + val else SPLITS[2]
            rows.append({"path": photo.path, "class": name, "split": split, "sha256": photo.sha256,
                         "width": photo.width, "height": photo.height,
                         "file": f"{split}/{name}/{file_names[photo.path]}"})
    return sorted(rows, key=lambda row: row["path"])


def _refuse_empty_splits(rows: list[dict], classes: list[str], ratios: tuple[float, float, float]) -> None:
    """Refuse a split that gives some class no photo in train, val or test: train and evaluate need each."""
    counts = Counter((row["class"], row["split"]) for row in rows)
    short = [f"of {name} ({sum(counts[name, split] for split in SPLITS)} usable) to "
             + " or ".join(split for split in SPLITS if not counts[name, split])
             for name in classes if not all(counts[name, split] for split in SPLITS)]
    if short:
        raise UsageError(f"--ratios {','.join(map(str, ratios))} gives no photo {', '.join(short)}: each class "
                         f"needs one or more in train, val and test; add photos, or raise the smaller fractions")


def _output_names(members: list[Photo], layout: str) -> dict[str, str]:
    """Keep each file name (escaped where it is not UTF-8, as the manifest writes it); names that
    collide within a class (nested folders) get their subpath."""
    def inner(path: str) -> str:
        return escape_name(path.split("/", 1)[1] if layout == "folders" else path)

    def base(path: str) -> str:
        return escape_name(path.rsplit("/", 1)[-1])

    # Compared case-folded, so the output also works on case-insensitive file systems.
    taken = Counter(base(photo.path).casefold() for photo in members)
    names = {}
    for photo in members:
        own = base(photo.path)
        names[photo.path] = own if taken[own.casefold()] == 1 else inner(photo.path).replace("/", "__")
    clashes = Counter(name.casefold() for name in names.values())
    for photo in members:
        name = names[photo.path]
        if clashes[name.casefold()] > 1:  # only when a real name already looks like a/b flattened
            stem, dot, suffix = name.rpartition(".")
            names[photo.path] = f"{stem}-{photo.sha256[:12]}{dot}{suffix}" if dot else f"{name}-{photo.sha256[:12]}"
    return names


def _no_usable_photos(source: Path, left_out: list[LeftOut]) -> CatsdogsError:
    """The error for a source without one usable photo, saying what it held instead."""
    if not left_out:
        return CatsdogsError(f"no images found in {str(source)!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
                             f": pass the folder that holds one subfolder per class (e.g. Cat/ and Dog/), or "
                             f"Kaggle-style files (cat.N.jpg)")
    reasons = Counter(item.reason for item in left_out)
    listed = ", ".join(f"{reason}: {number}" for reason, number in sorted(reasons.items()))
    if reasons[LINK_OUTSIDE] >= len(left_out) / 2:
        advice = ("split reads only files inside the source, so that it cannot be led elsewhere: pass the folder "
                  "the links point into, or copy the photos in")
    else:
        advice = "put the photos in one subfolder per class (e.g. Cat/ and Dog/), or name them like cat.N.jpg"
    return CatsdogsError(f"no usable photos in {str(source)!r} ({listed}): {advice}")


def _too_few_classes(classes: list[str], source: Path, left_out: list[LeftOut]) -> CatsdogsError:
    if not classes:
        return _no_usable_photos(source, left_out)
    return CatsdogsError(f"only one class ({classes[0]!r}) has usable photos in {str(source)!r}; split "
                         f"needs two or more: put each class in its own subfolder, e.g. Cat/ and Dog/")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _table(classes: list[str], counts: dict[str, dict[str, int]]) -> list[str]:
    width = max(5, *(len(name) for name in classes))
    header = f"{'class':<{width}} " + " ".join(f"{split:>6}" for split in (*SPLITS, "total"))
    lines = [header]
    for name in [*classes, "total"]:
        values = [sum(counts[split].values()) if name == "total" else counts[split][name] for split in SPLITS]
        lines.append(f"{name:<{width}} " + " ".join(f"{value:>6}" for value in (*values, sum(values))))
    return lines


def _write_split(folder: Path, source: Path, rows: list[dict], left_out: list[LeftOut], summary: SplitSummary,
                 record: dict, progress: bool) -> None:
    """Write the class folders, the photos, the manifest, rejected.csv and the record into `folder`."""
    for split in SPLITS:
        for name in summary.classes:
            (folder / split / name).mkdir(parents=True)
    for row in progress_bar(rows, desc="Writing split", unit="file", show=progress):
        summary.copied += staging.place_file(source / row["path"], folder / row["file"], summary.mode)
    _write_csv(folder / MANIFEST, MANIFEST_COLUMNS, rows)
    _write_csv(folder / REJECTED_CSV, ("path", "status", "reason", "detail"), [asdict(item) for item in left_out])
    stored = {key: value for key, value in asdict(summary).items() if key not in ("out", "source", "unchanged")}
    record = {**record, "summary": stored}
    (folder / RECORD).write_bytes(utf8(json.dumps(escape_names(record), indent=2, ensure_ascii=False) + "\n"))


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    # "\n" line ends and UTF-8 whatever the platform, so the manifest is byte-identical everywhere;
    # a file name that is not valid UTF-8 is written escaped (see catsdogs.names), so the file stays UTF-8.
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(utf8(text.getvalue()))

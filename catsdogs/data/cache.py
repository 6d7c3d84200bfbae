"""Reading a split folder: the file list, the decode-once cache, and batches of uint8 images."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from catsdogs.atomic import write_text_atomic
from catsdogs.cpus import usable_cpus
from catsdogs.data.images import (HIDDEN_FILE, HIDDEN_FOLDER, NOT_IN_CLASS_FOLDER, describe_left_out, find_photos,
                                  is_hidden, load_resized, no_photos_message)
from catsdogs.data.split import SPLITS
from catsdogs.data.staging import left_by_dead_run
from catsdogs.data.transforms import Preset
from catsdogs.errors import CatsdogsError
from catsdogs.interrupts import ignore_ctrl_c
from catsdogs.progress import progress_bar

CACHE_DIR = ".cache"
CACHE_VERSION = 1  # bump when load_resized changes what it produces
# What writing in a folder raises when it cannot be written: a read-only mount (EROFS), or a folder
# of another user's (EACCES, EPERM). The cache is then skipped, not the run.
CANNOT_WRITE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


@dataclass
class ImageSplit:
    """One split of a data folder: image paths, integer labels and the class names they index."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    unreadable: list[Path] = field(default_factory=list)
    left_out: list[tuple[Path, str]] = field(default_factory=list)  # what the class folders held besides photos

    def __len__(self) -> int:
        return len(self.paths)


def read_split(data_dir: str | Path, split: str, classes: Sequence[str] | None = None) -> ImageSplit:
    """List `data_dir/split/<class>/*` images; `classes`, when given, must match the folders."""
    data_dir = Path(data_dir)
    hint = (f"run `catsdogs split SOURCE --out {shlex.quote(str(data_dir))}` first (SOURCE: PetImages, or your "
            "photos in one subfolder per class), or pass --data DIR")
    if data_dir.exists() and not data_dir.is_dir():
        raise CatsdogsError(f"{data_dir} is a file, not a split folder: pass the folder `catsdogs split` made")
    if not data_dir.is_dir():
        raise CatsdogsError(f"data folder {data_dir} does not exist: {hint}")
    root = data_dir / split
    if not root.is_dir():
        raise CatsdogsError(f"{data_dir} has no {split}/ folder: {hint}")
    return read_class_folder(root, classes, hint)


def read_class_folder(root: str | Path, classes: Sequence[str] | None = None, hint: str = "",
                      some_classes: bool = False) -> ImageSplit:
    """List `root/<class>/*` images, one subfolder per class; `classes`, when given, must match them
    (or, with `some_classes`, include them: photos of only some of the model's classes)."""
    root = Path(root)
    found = class_folders(root)
    if len(found) < 2 and classes is None:
        raise CatsdogsError(f"{root} has {len(found)} class folder(s) ({', '.join(found) or 'none'}); "
                            "a classifier needs at least two, one subfolder per class")
    names = list(classes) if classes is not None else found
    if classes is not None and found != sorted(names) and not (some_classes and found and set(found) <= set(names)):
        raise CatsdogsError(f"{root} has classes {found}, but the model was trained on {sorted(names)}")
    left_out: list[tuple[Path, str]] = []
    for entry in sorted(root.iterdir()):  # what lies beside the class folders
        if not entry.is_dir():
            left_out.append((entry, HIDDEN_FILE if is_hidden(entry.name) else NOT_IN_CLASS_FOLDER))
        elif is_hidden(entry.name):
            left_out.append((entry, HIDDEN_FOLDER))
    by_class: dict[int, list[Path]] = {}
    for index, name in enumerate(names):
        if some_classes and name not in found:
            continue
        search = find_photos(root / name)
        left_out += search.left_out
        if search.photos:
            by_class[index] = search.photos
        elif not some_classes:  # a class of the model with no photos here is fine when measuring some classes
            raise CatsdogsError(no_photos_message(root / name, search.left_out) + (f": {hint}" if hint else ""))
    if not by_class:
        raise CatsdogsError(f"{root} holds no photo files (.jpg, .png, ...) in its class folders "
                            f"({', '.join(found)})" + (f": {hint}" if hint else ""))
    paths, labels = _one_label_per_file(by_class, names, left_out)
    if not paths:
        raise CatsdogsError(f"every photo in {root} was left out: {'; '.join(describe_left_out(left_out, 2))}")
    return ImageSplit(root, names, paths, np.asarray(labels, dtype=np.int64), left_out=left_out)


def _one_label_per_file(by_class: dict[int, list[Path]], names: Sequence[str],
                        left_out: list[tuple[Path, str]]) -> tuple[list[Path], list[int]]:
    """The photos with their labels, each file once: links (symbolic or hard) can make a file appear
    twice in a class (kept once) or in two classes (a label conflict: every copy is left out, as
    split does)."""
    def identity(photo: Path) -> tuple[int, int] | str:
        try:
            info = os.stat(photo)
            return info.st_dev, info.st_ino
        except OSError:  # gone since the search: the decoder reports it
            return str(photo)

    classes_of: dict[tuple[int, int] | str, set[int]] = {}
    for index, photos in by_class.items():
        for photo in photos:
            classes_of.setdefault(identity(photo), set()).add(index)
    paths: list[Path] = []
    labels: list[int] = []
    taken: set[tuple[int, int] | str] = set()
    for index, photos in by_class.items():
        for photo in photos:
            real = identity(photo)
            if len(classes_of[real]) > 1:
                others = sorted(names[i] for i in classes_of[real])
                left_out.append((photo, f"the same file under {' and '.join(others)} (through a link)"))
            elif real in taken:
                left_out.append((photo, "the same file again (through a link)"))
            else:
                taken.add(real)
                paths.append(photo)
                labels.append(index)
    return paths, labels


def split_fingerprint(split: ImageSplit) -> str:
    """A hash of the split's file names, classes and sizes: equal for the same photos anywhere."""
    # surrogateescape: the bytes of a name that is not UTF-8 (Linux allows them), where strict would fail.
    digest = hashlib.sha256(" ".join(split.classes).encode("utf-8", "surrogateescape"))
    for path, label in zip(split.paths, split.labels):
        line = f"{path.relative_to(split.root).as_posix()}\0{label}\0{path.stat().st_size}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def class_folders(root: Path) -> list[str]:
    """The names of the subfolders of `root` that can hold photos (not hidden), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))


def _cache_key(split: ImageSplit, image_size: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} {image_size} {split.classes}".encode("utf-8", "surrogateescape"))
    for path, label in zip(split.paths, split.labels):
        stat = path.stat()
        line = f"{path.relative_to(split.root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _load_or_none(args: tuple[str, int]) -> np.ndarray | None:
    path, size = args
    try:
        return load_resized(path, size)
    except Exception:  # any decode failure: the caller counts and reports it
        return None




def load_cache(split: ImageSplit, image_size: int, mode: str = "auto", jobs: int | None = None,
               progress: bool = True) -> np.ndarray | None:
    """Return a memory-mapped N x S x S x 3 uint8 array of the split, building it if needed.

    The file sits in `<data>/.cache/`, named by a key over the file list, sizes, modification
    times and image size, so a changed split or size gets a new cache and a stale one is never
    read. Returns None when `mode` is "off" or the data folder cannot be written (see CANNOT_WRITE);
    a full disk, found before the build or during it, raises CatsdogsError saying how much room it needs.
    """
    if mode == "off":
        return None
    cache_dir = split.root.parent / CACHE_DIR
    stem = f"{split.root.name}-{image_size}px-{_cache_key(split, image_size)}"
    array_path, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    if mode != "rebuild" and array_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            images = np.load(array_path, mmap_mode="r")
            if images.shape == (len(split), image_size, image_size, 3) and images.dtype == np.uint8:
                split.unreadable = [split.paths[i] for i in meta.get("unreadable", [])]
                return images
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    try:
        cache_dir.mkdir(exist_ok=True)
        _remove_stale(cache_dir, split.root.name, image_size, keep=stem)
        return _build_cache(split, image_size, array_path, meta_path, jobs or usable_cpus(), progress)
    except OSError as error:
        if error.errno in CANNOT_WRITE:
            print(f"note: cannot write a cache in {cache_dir} ({error.strerror}); reading the images every epoch",
                  file=sys.stderr)
            return None
        if error.errno == errno.ENOSPC:
            raise _no_room(len(split), image_size, cache_dir) from None
        raise


def _remove_stale(cache_dir: Path, split_name: str, image_size: int, keep: str) -> None:
    """Remove this size's other caches (another file list), and any size's file of a killed build."""
    for old in cache_dir.glob(f"{split_name}-{image_size}px-*"):
        if not old.name.startswith(keep):
            old.unlink(missing_ok=True)
    for partial in cache_dir.glob(f".{split_name}-*px-*.tmp"):  # .NAME.npy.PID.tmp of a build that was killed
        pid = partial.name.split(".")[-2]
        # A file of this process is no killed build's.
        if pid.isdigit() and int(pid) != os.getpid() and left_by_dead_run(partial, int(pid)):
            partial.unlink(missing_ok=True)


def _build_cache(split: ImageSplit, size: int, array_path: Path, meta_path: Path, jobs: int,
                 progress: bool) -> np.ndarray:
    tmp = array_path.with_name(f".{array_path.name}.{os.getpid()}.tmp")
    if len(split) * size * size * 3 > shutil.disk_usage(array_path.parent).free:
        raise _no_room(len(split), size, array_path.parent)
    unreadable: list[int] = []
    work = [(str(p), size) for p in split.paths]
    bar = progress_bar(total=len(work), desc=f"caching {split.root.name} at {size}px", unit="img",
                       show=progress, leave=False)
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(split), size, size, 3))
        if jobs > 1 and len(work) > 64:
            with ProcessPoolExecutor(max_workers=jobs, initializer=ignore_ctrl_c) as pool:
                results = pool.map(_load_or_none, work, chunksize=32)
                _fill(images, results, unreadable, bar)
        else:
            _fill(images, map(_load_or_none, work), unreadable, bar)
        images.flush()
        del images
        # The metadata first: the array's name appearing last completes the pair a later run reads.
        meta = {"version": CACHE_VERSION, "count": len(split), "image_size": size, "unreadable": unreadable}
        write_text_atomic(meta_path, json.dumps(meta))
        os.replace(tmp, array_path)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    split.unreadable = [split.paths[i] for i in unreadable]
    return np.load(array_path, mmap_mode="r")


def _no_room(count: int, size: int, folder: Path) -> CatsdogsError:
    need, free = count * size * size * 3, shutil.disk_usage(folder if folder.is_dir() else folder.parent).free
    return CatsdogsError(f"the decoded cache of {count} photos at {size}px needs {_gb(need)} in {folder}, which has "
                         f"{_gb(free)} free: free some space, use a smaller --image-size, or --cache off (decoding "
                         "the photos every epoch)")


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _fill(images: np.ndarray, results: Iterator[np.ndarray | None], unreadable: list[int], bar: tqdm) -> None:
    for index, array in enumerate(results):
        if array is None:
            unreadable.append(index)  # left as zeros and never served
        else:
            images[index] = array
        bar.update()


class _FileDataset(torch.utils.data.Dataset):
    """Reads and resizes one file per item; an unreadable file yields label -1 to be dropped."""

    def __init__(self, split: ImageSplit, preset: Preset) -> None:
        self.split, self.size = split, preset.image_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = _load_or_none((str(self.split.paths[index]), self.size))
        if array is None:
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), -1
        return torch.from_numpy(array), int(self.split.labels[index])


def _copy_to(images: np.ndarray, device: torch.device, chunk: int = 1024) -> torch.Tensor:
    """Copy a memory-mapped cache to `device` a chunk at a time, never holding it twice in RAM."""
    target = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):
        target[start:start + chunk] = torch.from_numpy(np.array(images[start:start + chunk]))
    return target


def fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` of decoded images may live on `device`: at most 40% of the memory still free,
    leaving the rest to the model, its optimizer and the activations of a batch."""
    if device.type != "cuda":
        return False
    free = torch.cuda.mem_get_info(device)[0]
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # held by torch, unused
    return nbytes < 0.4 * free


class BatchSource:
    """Serves uint8 NHWC batches of a split by index lists, from the cache or from the files.

    On a GPU with room for the whole cache, the cache is copied there once and batches are cut
    from it on the device, so no image crosses the PCIe bus twice.
    """

    def __init__(self, split: ImageSplit, preset: Preset, images: np.ndarray | None, workers: int = 0,
                 device: torch.device | None = None, resident: bool | None = None) -> None:
        """`resident`: hold the cache on `device`; None decides by itself (CUDA, and it fits)."""
        self.split, self.preset, self.images, self.workers = split, preset, images, workers
        self.failed: list[Path] = []  # files that could not be decoded when served, each once, in order met
        bad = {split.paths.index(p) for p in split.unreadable} if split.unreadable else set()
        self.valid = np.asarray([i for i in range(len(split)) if i not in bad], dtype=np.int64)
        self.on_device: tuple[torch.Tensor, torch.Tensor] | None = None
        if resident is None:
            resident = images is not None and device is not None and fits_on_gpu(images.nbytes, device)
        if resident and images is not None and device is not None:
            self.on_device = (_copy_to(images, device), torch.from_numpy(split.labels).to(device))

    def __len__(self) -> int:
        return len(self.valid)

    def order(self, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
        """The epoch's batches of indices: shuffled by `generator`, or in file order without it."""
        if generator is not None:
            picks = self.valid[torch.randperm(len(self.valid), generator=generator).numpy()]
        else:
            picks = self.valid
        return [picks[i:i + batch_size] for i in range(0, len(picks), batch_size)]

    def batches(self, order: Sequence[np.ndarray], pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.on_device is not None:
            images, labels = self.on_device
            for indices in order:
                index = torch.from_numpy(indices).to(images.device, non_blocking=True)
                yield images.index_select(0, index), labels.index_select(0, index)
            return
        if self.images is not None:
            for indices in order:
                images = torch.from_numpy(self.images[indices])
                labels = torch.from_numpy(self.split.labels[indices])
                yield (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)
            return
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.split, self.preset), batch_sampler=[list(b) for b in order],
            num_workers=self.workers, pin_memory=pin, worker_init_fn=ignore_ctrl_c if self.workers else None,
            # Its own generator: otherwise the loader draws a seed from the global RNG and shifts dropout.
            generator=torch.Generator().manual_seed(0))
        for position, (images, labels) in enumerate(loader):
            keep = labels >= 0
            if not bool(keep.all()):
                for index, ok in zip(order[position], keep.tolist()):
                    if not ok and self.split.paths[index] not in self.failed:  # each file once, however many epochs
                        self.failed.append(self.split.paths[index])
                images, labels = images[keep], labels[keep]
            if len(labels):
                yield images, labels

"""ImageNet weights from torchvision's server: fetched once into torch's hub cache, hash-checked, renamed atomically."""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

from catsdogs import __version__
from catsdogs.atomic import atomic_write
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.progress import progress_bar

# torchvision's DEFAULT ImageNet weights of each model (a test keeps this equal to torchvision's enums).
IMAGENET_URLS = {
    "convnext_tiny": "https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
    "efficientnet_b0": "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
    "mobilenet_v3_small": "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
}
# torch.hub's convention: the file name carries the first hex digits of the file's SHA-256 after a dash.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
TIMEOUT = 30.0  # seconds without a byte before giving up
BLOCK = 1 << 16


def cached_weights_path(url: str) -> Path:
    """Where torch.hub (and torchvision) keep the file of `url`: <hub dir>/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def imagenet_weights(name: str, progress: bool = True) -> Path:
    """The cached ImageNet weights file of model `name`, downloaded first when it is not there."""
    if name not in IMAGENET_URLS:
        raise UsageError(f"model {name} has no ImageNet weights to download; --pretrained imagenet works with "
                         f"{', '.join(sorted(IMAGENET_URLS))}")
    url = IMAGENET_URLS[name]
    path = cached_weights_path(url)
    if not path.is_file():
        download_checked(url, path, progress=progress, what=f"the ImageNet weights of {name}")
    return path


def published_hash(url: str) -> str:
    found = HASH_IN_NAME.search(Path(urlparse(url).path).name)
    if found is None:
        raise ValueError(f"{url}: no SHA-256 prefix in the file name (NAME-<hex>.pth)")
    return found.group(1)


def download_checked(url: str, path: Path, progress: bool = True, what: str = "the file") -> Path:
    """Download `url` to `path`, checking its SHA-256 against the prefix in its name.

    The bytes go to a hidden temporary file beside `path`, renamed to `path` only when complete
    and matching: an interrupted or corrupted download never leaves a file that looks complete.
    Any failure is one line saying which file to put where by hand.
    """
    expected = published_hash(url)
    by_hand = f"on a machine with internet, download {url} and put it at {path} (or pass a weights file with " \
              "--pretrained FILE)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(url, headers={"User-Agent": f"catsdogs/{__version__}"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with atomic_write(path) as handle, progress_bar(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                                            desc=f"downloading {path.name}", show=progress,
                                                            leave=False) as bar:
                digest, got = hashlib.sha256(), 0
                while block := _read(response):
                    handle.write(block)
                    digest.update(block)
                    got += len(block)
                    bar.update(len(block))
                if size is not None and got != size:
                    raise CatsdogsError(f"the download of {what} was cut off after {got:,} of {size:,} bytes and "
                                        f"nothing was kept; try again, or {by_hand}")
                if not digest.hexdigest().startswith(expected):
                    raise CatsdogsError(f"the download of {what} from {url} is corrupt (its SHA-256 starts "
                                        f"{digest.hexdigest()[:len(expected)]}, the published hash {expected}) and "
                                        f"was deleted; try again, or {by_hand}")
    except urllib.error.HTTPError as error:
        raise CatsdogsError(f"could not download {what}: {url} answered HTTP {error.code} {error.reason}; "
                            f"{by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise CatsdogsError(f"could not download {what} ({reason}); {by_hand}") from None
    return path


def _read(response: http.client.HTTPResponse) -> bytes:
    """The next block; b"" at the end, and also where the server closed early (the size check tells)."""
    try:
        return response.read(BLOCK)
    except http.client.IncompleteRead as error:
        return error.partial

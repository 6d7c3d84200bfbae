"""How much memory `catsdogs serve` takes to decode one large PNG upload: the peak resident memory a
fresh process adds while served.decode_photo reads it, for photos of a few sizes.

    python benchmarks/decode_peak.py [--megapixels 12,40]

Each size is a 4:3 RGB PNG of coarse noise (so it compresses like a photo, not like a flat
colour), decoded in a child process of its own so that one size's peak does not hide the next.
A JPEG costs far less: the decoder shrinks it while decoding (draft mode) to the model's size.
"""

from __future__ import annotations

import argparse
import io
import math
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys
from catsdogs.inference.served import decode_photo
data = open(sys.argv[1], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_photo(data, 96)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def write_png(path: Path, megapixels: float) -> tuple[int, int]:
    import numpy as np
    from PIL import Image

    height = int(math.sqrt(megapixels * 1e6 * 3 / 4))
    width = int(megapixels * 1e6 / height)
    noise = np.random.default_rng(0).integers(0, 4, (height, width, 3), dtype=np.uint8) * 64
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    path.write_bytes(buffer.getvalue())
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", default="12,40", help="comma-separated sizes [12,40]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for megapixels in map(float, args.megapixels.split(",")):
            path = Path(folder) / "photo.png"
            width, height = write_png(path, megapixels)
            peak = float(subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True,
                                        text=True).stdout)
            print(f"{width}x{height} PNG ({width * height / 1e6:.1f} MP, {path.stat().st_size / 1e6:.0f} MB): "
                  f"decoding it adds {peak:.0f} MiB at peak ({width * height * 3 / 2**20:.0f} MiB of RGB pixels)")


if __name__ == "__main__":
    main()

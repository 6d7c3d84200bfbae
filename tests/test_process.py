"""Tests for catsdogs.process: importing or using catsdogs as a library leaves the process alone;
the commands set what catsdogs.process documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from catsdogs.data.images import MAX_IMAGE_PIXELS

ROOT = Path(__file__).resolve().parents[1]
# A program that imports catsdogs, with settings of its own made first (values no one would choose).
PROGRAM_LIMIT, PROGRAM_THREADS = 12_345_678, 3
PROBE = textwrap.dedent(f"""
    import atexit, ctypes, gc, json, sys
    import cv2
    from PIL import Image

    # First registered, so the last exit handler to run: were the collector's objects frozen for the teardown?
    atexit.register(lambda: print(json.dumps({{"frozen_at_exit": gc.get_freeze_count() > 0}})))

    Image.MAX_IMAGE_PIXELS = {PROGRAM_LIMIT}
    cv2.setNumThreads({PROGRAM_THREADS})

    def tuned_malloc():
        # glibc maps a 30 MB block of its own (mmap) below its mmap threshold, 32 MB tuned, and 128 KB to
        # at most 32 MB by default, rising only as mapped blocks of that size are freed; the chunk header
        # before the block says which (bit 2: IS_MMAPPED).
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        block = libc.malloc(30 << 20)
        mapped = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2
        libc.free(ctypes.c_void_p(block))
        return not mapped

    def report():
        print(json.dumps({{"max_image_pixels": Image.MAX_IMAGE_PIXELS, "opencv_threads": cv2.getNumThreads(),
                          "tuned_malloc": tuned_malloc()}}))
""")
UNTOUCHED = {"max_image_pixels": PROGRAM_LIMIT, "opencv_threads": PROGRAM_THREADS, "tuned_malloc": False,
             "frozen_at_exit": False}

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="the allocator probe needs Linux and glibc")


def state_after(code: str, **env: str) -> dict:
    """Run PROBE, then `code`, in a fresh interpreter on this checkout; return what `report()` printed last, and
    what the probe's exit handler printed after it."""
    done = subprocess.run([sys.executable, "-c", PROBE + textwrap.dedent(code) + "\nreport()\n"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr
    *_, reported, at_exit = done.stdout.splitlines()
    return {**json.loads(reported), **json.loads(at_exit)}


@linux_glibc
def test_the_probe_sees_each_setting_change() -> None:
    assert state_after("") == UNTOUCHED
    changed = state_after("""
        from catsdogs.cpus import tune_allocator
        Image.MAX_IMAGE_PIXELS = 1
        cv2.setNumThreads(1)
        tune_allocator()
        atexit.register(gc.freeze)
    """)
    assert changed == {"max_image_pixels": 1, "opencv_threads": 1, "tuned_malloc": True, "frozen_at_exit": True}


@linux_glibc
def test_importing_every_catsdogs_module_changes_nothing_process_wide() -> None:
    assert state_after("""
        import importlib, pkgutil
        import catsdogs
        for module in pkgutil.walk_packages(catsdogs.__path__, "catsdogs."):
            if module.name != "catsdogs.__main__":  # that one runs the command line
                importlib.import_module(module.name)
    """) == UNTOUCHED


@linux_glibc
def test_a_trained_model_used_as_a_library_changes_nothing_process_wide(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    photos = sorted(map(str, (data / "test").rglob("*.jpg")))
    assert state_after(f"""
        from pathlib import Path
        from catsdogs.inference.evaluate import evaluate_run
        from catsdogs.inference.explain import explain_photos
        from catsdogs.inference.predict import load_trained, predict_photos
        from catsdogs.data.split import split_dataset
        trained = load_trained({str(run_dir)!r}, device="cpu")
        predict_photos(trained, [Path(p) for p in {photos!r}], progress=False)
        explain_photos(trained, [Path({photos[0]!r})], {str(tmp_path / "explain")!r}, progress=False)
        evaluate_run({str(run_dir)!r}, data={str(data)!r}, device="cpu", out_dir={str(tmp_path / "eval")!r},
                     progress=False)
        split_dataset({str(data / "test")!r}, {str(tmp_path / "split")!r}, ratios=(0.34, 0.33, 0.33), jobs=2,
                      progress=False)
    """) == UNTOUCHED


@linux_glibc
def test_every_command_sets_what_catsdogs_process_documents() -> None:
    command = """
        from catsdogs.cli import main
        main(["optimizers"], standalone_mode=False)
    """
    assert state_after(command) == {"max_image_pixels": MAX_IMAGE_PIXELS, "opencv_threads": 1, "tuned_malloc": True,
                                    "frozen_at_exit": True}
    assert state_after(command, CATSDOGS_MALLOC="default")["tuned_malloc"] is False  # the documented way out


"""Makes every catsdogs training run in this process, once its first epoch is saved, wait until it is asked to stop.

For tests that press Ctrl-C on real processes (a compare --jobs study, a torchrun run): the test puts this folder
on PYTHONPATH (Python imports `sitecustomize` at start-up) and names a folder in CATSDOGS_TEST_PAUSE
(tests.helpers.paused_at_epoch_2), where each waiting process leaves a file `waiting-PID`. No run can then finish
before the Ctrl-C, however slow its neighbour's start, and every run meets the signal at the same point: the start
of its second epoch, which it then begins and stops at its first chance. Nothing is imported or patched until
catsdogs.training.loop is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time

PATCHED = "catsdogs.training.loop"
FOLDER = os.environ.get("CATSDOGS_TEST_PAUSE")
LONGEST_WAIT = 300.0  # seconds: a test that never presses Ctrl-C fails on its own timeout, not here


def _wait_at_epoch_2(module) -> None:
    run_epoch = module.EpochLoop.run_epoch

    def waiting_run_epoch(self, stop, show):
        progress = self.state.progress
        if progress.epoch == 1 and progress.step == 0:
            with open(os.path.join(FOLDER, f"waiting-{os.getpid()}"), "w"):
                pass
            deadline = time.monotonic() + LONGEST_WAIT
            while not stop.requested and time.monotonic() < deadline:
                time.sleep(0.01)
        return run_epoch(self, stop, show)

    module.EpochLoop.run_epoch = waiting_run_epoch


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != PATCHED:
            return None
        sys.meta_path.remove(self)  # find it as Python would, once
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wait_at_epoch_2(module)

        spec.loader.exec_module = exec_module
        return spec


if FOLDER:
    sys.meta_path.insert(0, _PatchOnImport())

"""Dynamic batching for a server: photos of concurrent requests gathered into one model call, in a bounded queue.

A request's photos wait in one queue. One worker task takes the oldest, then keeps gathering
until the batch holds `max_batch` photos or `max_wait` seconds have passed since its first
photo arrived, and runs the model on the batch in a thread of its own: the event loop keeps
accepting and answering requests meanwhile, and the next batch gathers while this one runs.
The queue holds at most `max_queue` photos; past that `submit` raises QueueFull at once, so a
server under more load than it can serve says so (503) instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from catsdogs.inference.serve_settings import BatchSettings

RunBatch = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] photos -> [N, classes] probabilities


class QueueFull(Exception):
    """More photos are waiting than the queue holds: the caller should try again a little later."""


@dataclass
class _Waiting:
    image: np.ndarray
    future: asyncio.Future
    arrived: float


class Batcher:
    """Gathers photos from concurrent callers into batches for `run_batch` (see the module's docstring).

    Use inside a running event loop: `start()`, then `await submit(images)` from any task, and
    `await close()` to finish the photos already queued and stop.
    """

    def __init__(self, run_batch: RunBatch, settings: BatchSettings, executor: ThreadPoolExecutor) -> None:
        self.run_batch = run_batch
        self.settings = settings
        self.executor = executor  # one thread: model calls (and whatever else shares it) run one at a time
        self._queue: asyncio.Queue[_Waiting | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._unanswered = 0  # photos submitted whose batch has not run yet: queued, gathering or running
        self.batches = 0  # model calls made, and photos through them: for /health and the tests
        self.photos = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    @property
    def waiting(self) -> int:
        """Photos submitted and not yet answered (those of the batch being gathered or run included)."""
        return self._unanswered

    async def submit(self, images: list[np.ndarray]) -> np.ndarray:
        """The probabilities of `images` (one row per photo), once their batches have run.

        Raises QueueFull, queueing nothing, when they would take the queue past `max_queue`."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self.waiting + len(images) > self.settings.max_queue:
            raise QueueFull(f"{self.waiting} photos are waiting (the queue holds {self.settings.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            futures.append(loop.create_future())
            self._queue.put_nowait(_Waiting(image, futures[-1], time.monotonic()))
        self._unanswered += len(images)
        return np.stack(await asyncio.gather(*futures))

    async def close(self) -> None:
        """Answer every photo queued so far, then stop the worker."""
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, stop = await self._gather(first)
            await self._run(batch)
            if stop:
                return

    async def _gather(self, first: _Waiting) -> tuple[list[_Waiting], bool]:
        """`first` and the photos that follow it, up to max_batch or until its wait is over; and whether
        the close marker came (the batch still runs)."""
        batch = [first]
        deadline = first.arrived + self.settings.max_wait_ms / 1000
        while len(batch) < self.settings.max_batch:
            if self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            await self._answer(batch)
        finally:
            self._unanswered -= len(batch)

    async def _answer(self, batch: list[_Waiting]) -> None:
        live = [item for item in batch if not item.future.done()]  # a caller that went away needs no answer
        if not live:
            return
        images = np.stack([item.image for item in live])
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, images)
        except Exception as error:  # noqa: BLE001 - the callers get the error, the worker goes on
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self.batches += 1
        self.photos += len(live)
        for item, row in zip(live, probs):
            if not item.future.done():
                item.future.set_result(row)

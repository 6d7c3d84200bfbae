"""The dynamic batcher: concurrent photos gathered up to a size and a wait, a bounded queue, errors to the callers."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from catsdogs.inference.batcher import Batcher, QueueFull
from catsdogs.inference.serve_settings import BatchSettings


class Model:
    """A stand-in model: each photo's 'probabilities' are its first pixel's values; records each batch's size.

    `gate`, when set, holds every call until it is opened, so a test can fill the queue meanwhile."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.gate, self.fail = gate, fail

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        self.sizes.append(len(images))
        if self.fail:
            raise ValueError("the model failed")
        return images[:, 0, 0, :2].astype(np.float32)


def photos(count: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), index, dtype=np.uint8) for index in range(count)]


def run(coroutine_function, model: Model, settings: BatchSettings):
    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, settings, executor)
            batcher.start()
            try:
                return await coroutine_function(batcher)
            finally:
                await batcher.close()

    return asyncio.run(main())


@pytest.mark.parametrize("max_batch, sizes", [(4, [4, 4, 2]), (1, [1] * 10), (32, [10])])
def test_concurrent_photos_are_gathered_up_to_the_batch_size_and_each_gets_its_own_answer(max_batch, sizes) -> None:
    model = Model()

    async def ten_callers(batcher: Batcher):
        return await asyncio.gather(*(batcher.submit([image]) for image in photos(10)))

    answers = run(ten_callers, model, BatchSettings(max_batch=max_batch, max_wait_ms=200, max_queue=64))
    assert model.sizes == sizes
    assert [answer.tolist() for answer in answers] == [[[index, index]] for index in range(10)]


def test_a_photo_waits_at_most_max_wait_for_company() -> None:
    model = Model()

    async def two_apart(batcher: Batcher):
        first = asyncio.ensure_future(batcher.submit(photos(1)))
        await asyncio.sleep(0.3)  # far past the 20 ms wait: the first photo has gone alone
        second = await batcher.submit(photos(2)[1:])
        return await first, second

    first, second = run(two_apart, model, BatchSettings(max_batch=8, max_wait_ms=20, max_queue=8))
    assert model.sizes == [1, 1] and first.tolist() == [[0, 0]] and second.tolist() == [[1, 1]]


def test_a_full_queue_refuses_at_once_and_queues_nothing_then_takes_photos_again() -> None:
    gate = threading.Event()
    model = Model(gate)

    async def overfill(batcher: Batcher):
        held = asyncio.ensure_future(batcher.submit(photos(3)))  # a batch of 2 runs (held), 1 waits
        await asyncio.sleep(0.1)
        assert batcher.waiting == 3
        with pytest.raises(QueueFull, match="3 photos are waiting"):
            await batcher.submit(photos(2))
        assert batcher.waiting == 3
        gate.set()
        await held
        return await batcher.submit(photos(2))

    answer = run(overfill, model, BatchSettings(max_batch=2, max_wait_ms=0, max_queue=4))
    assert model.sizes == [2, 1, 2] and answer.tolist() == [[0, 0], [1, 1]]


def test_a_failing_model_fails_its_callers_and_the_batcher_goes_on() -> None:
    model = Model(fail=True)

    async def fail_then_recover(batcher: Batcher):
        with pytest.raises(ValueError, match="the model failed"):
            await batcher.submit(photos(2))
        model.fail = False
        return await batcher.submit(photos(1))

    assert run(fail_then_recover, model, BatchSettings(max_batch=4, max_wait_ms=0, max_queue=4)).tolist() == [[0, 0]]
    assert model.sizes == [2, 1]


def test_close_answers_every_photo_already_queued() -> None:
    model = Model()

    async def close_early(batcher: Batcher):
        pending = [asyncio.ensure_future(batcher.submit([image])) for image in photos(5)]
        await asyncio.sleep(0)  # all five queued
        await batcher.close()
        return [await future for future in pending]

    answers = run(close_early, model, BatchSettings(max_batch=2, max_wait_ms=1000, max_queue=8))
    assert [answer.tolist() for answer in answers] == [[[index, index]] for index in range(5)]
    assert sum(model.sizes) == 5


@pytest.mark.parametrize("values", [dict(max_batch=0), dict(max_queue=0), dict(max_wait_ms=-1)])
def test_settings_out_of_range_are_refused(values) -> None:
    with pytest.raises(ValueError, match="at least"):
        BatchSettings(**values)

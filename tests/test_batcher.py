"""The micro-batcher: lone requests go at once, requests that queue behind a busy scorer share a batch."""

import asyncio
import threading
import time

import numpy as np
import pytest

from firewall.batcher import MicroBatcher


class SlowScorer:
    """Scores rows as their own value, and remembers each batch's size."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.sizes.append(len(x))
        time.sleep(self.seconds)
        return {"rule": x[:, 0].copy()}


def run(coroutine):
    return asyncio.run(coroutine)


def lone_request_seconds(**batcher_options) -> float:
    async def scenario():
        batcher = MicroBatcher(SlowScorer(0.0), **batcher_options)
        batcher.start()
        started = time.perf_counter()
        await batcher.score(np.ones((1, 2), np.float32))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    return run(scenario())


def test_by_default_a_lone_request_is_scored_without_waiting_for_company():
    assert lone_request_seconds() < 0.1
    assert lone_request_seconds(max_wait_us=200_000) >= 0.2  # what an explicit wait costs an idle firewall


def test_requests_queued_behind_a_busy_scorer_form_the_next_batch_and_get_their_own_rows():
    scorer = SlowScorer(0.05)

    async def scenario():
        batcher = MicroBatcher(scorer, max_batch_size=32)
        batcher.start()
        first = asyncio.create_task(batcher.score(np.full((1, 2), -1.0, np.float32)))
        await asyncio.sleep(0.01)  # the first batch is being scored now
        rest = [batcher.score(np.full((2, 2), float(k), np.float32)) for k in range(5)]
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = run(scenario())
    assert scorer.sizes == [1, 10]
    assert results[0]["rule"].tolist() == [-1.0]
    assert [r["rule"].tolist() for r in results[1:]] == [[float(k)] * 2 for k in range(5)]


def test_a_batch_never_exceeds_the_maximum_size():
    scorer = SlowScorer(0.02)

    async def scenario():
        batcher = MicroBatcher(scorer, max_batch_size=4)
        batcher.start()
        await asyncio.gather(*[batcher.score(np.zeros((1, 2), np.float32)) for _ in range(10)])
        await batcher.stop()

    run(scenario())
    assert sum(scorer.sizes) == 10 and max(scorer.sizes) <= 4


def test_a_scoring_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    calls = []

    def failing_once(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("session failed")
        return {"rule": x[:, 0]}

    async def scenario():
        batcher = MicroBatcher(failing_once)
        batcher.start()
        with pytest.raises(RuntimeError, match="session failed"):
            await batcher.score(np.zeros((1, 2), np.float32))
        after = await batcher.score(np.ones((1, 2), np.float32))
        await batcher.stop()
        return after

    assert run(scenario())["rule"].tolist() == [1.0]


def test_stopping_scores_every_request_already_queued():
    scorer = SlowScorer(0.02)

    async def scenario():
        batcher = MicroBatcher(scorer, max_batch_size=2)
        batcher.start()
        pending = [asyncio.create_task(batcher.score(np.full((1, 2), float(k), np.float32))) for k in range(6)]
        await asyncio.sleep(0)  # every request is queued
        await batcher.stop()
        return [task.result()["rule"].tolist() for task in pending]

    assert run(scenario()) == [[float(k)] for k in range(6)]
    assert sum(scorer.sizes) == 6


def test_a_request_cancelled_while_it_waits_is_not_scored():
    scorer = SlowScorer(0.05)

    async def scenario():
        batcher = MicroBatcher(scorer)
        batcher.start()
        busy = asyncio.create_task(batcher.score(np.zeros((1, 2), np.float32)))
        await asyncio.sleep(0.01)  # the first batch is being scored now
        gone = asyncio.create_task(batcher.score(np.ones((3, 2), np.float32)))
        kept = asyncio.create_task(batcher.score(np.ones((1, 2), np.float32)))
        await asyncio.sleep(0)
        gone.cancel()  # a client that hung up
        await asyncio.gather(busy, kept)
        await batcher.stop()

    run(scenario())
    assert scorer.sizes == [1, 1]

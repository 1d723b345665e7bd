"""A dynamic micro-batcher: requests that arrive together are scored together.

Like Triton's dynamic batcher: the first waiting request opens a batch, which closes
when it holds `max_batch_size` inputs or `max_wait_us` has passed. Scoring runs in a
worker thread (onnxruntime releases the GIL), and requests that arrive meanwhile form
the next batch. The default wait is 0: batches still form under load, from the
requests that queued while the previous batch was scored, and an idle firewall
scores a lone request at once instead of holding it: with sequential forwarding at
concurrency 1 the wait cost a millisecond of p50 (docs/PERFORMANCE_NOTES.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Scores = dict[str, np.ndarray]


class MicroBatcher:
    def __init__(self, score: Callable[[np.ndarray], Scores], max_batch_size: int = 32, max_wait_us: int = 0,
                 on_batch: Callable[[int, float], None] | None = None):
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_us / 1e6
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def score(self, x: np.ndarray) -> Scores:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        items = [await self._queue.get()]
        rows = len(items[0][0])
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self._queue.empty():
                break
            try:
                item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            rows += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [(x, f) for x, f in items if not f.cancelled()]
            if not live:
                continue
            batch = np.concatenate([x for x, _ in live])
            started = time.perf_counter()
            try:
                scores = await loop.run_in_executor(self._executor, self._score, batch)
            except Exception as exc:  # every waiter learns of the failure; the loop goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
            start = 0
            for x, future in live:
                part = {rule: values[start : start + len(x)] for rule, values in scores.items()}
                start += len(x)
                if not future.done():
                    future.set_result(part)

"""A dynamic micro-batcher: requests that arrive together are scored together.

Like Triton's dynamic batcher: the first waiting request opens a batch, which closes
when it holds `max_batch_size` inputs or `max_wait_us` has passed. The default wait is
0: batches still form under load, from the requests that queued while the previous
batch was scored, and an idle firewall scores a lone request at once instead of
holding it: with sequential forwarding at concurrency 1 the wait cost a millisecond of
p50 (docs/PERFORMANCE_NOTES.md).

The batches are collected and scored on a thread of their own (onnxruntime releases
the GIL), fed by a thread-safe queue; the event loop is woken once per batch, to hand
each request its rows. Collecting on the loop instead cost a task wake-up per request
and an executor round trip per batch, CPU the sidecar shares with the model server
(docs/PERFORMANCE_NOTES.md, "The sidecar's own Python").
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

Scores = dict[str, np.ndarray]
_Item = tuple[np.ndarray, asyncio.Future]
_STOP = None  # the queue's sentinel: every request queued before it is still scored


class MicroBatcher:
    def __init__(self, score: Callable[[np.ndarray], Scores], max_batch_size: int = 32, max_wait_us: int = 0,
                 on_batch: Callable[[int, float], None] | None = None):
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_us / 1e6
        self._on_batch = on_batch
        self._pending: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="scoring", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Score what is queued, then end the scoring thread."""
        if self._thread is not None:
            self._pending.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    async def score(self, x: np.ndarray) -> Scores:
        future = self._loop.create_future()
        self._pending.put((x, future))
        return await future

    # -- the scoring thread ----------------------------------------------------------
    def _collect(self) -> list[_Item] | None:
        """The next batch, or None once the batcher is stopping and nothing is left."""
        first = self._pending.get()
        if first is _STOP:
            return None
        items, rows = [first], len(first[0])
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._pending.get_nowait() if remaining <= 0 else self._pending.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _STOP:
                self._pending.put(_STOP)  # seen again once this batch is scored
                break
            items.append(item)
            rows += len(item[0])
        return items

    def _run(self) -> None:
        while (items := self._collect()) is not None:
            live = [(x, f) for x, f in items if not f.cancelled()]  # a client that hung up is not scored
            if not live:
                continue
            started = time.perf_counter()
            try:
                outcome: Scores | Exception = self._score(np.concatenate([x for x, _ in live]))
            except Exception as exc:  # every waiter learns of the failure; the thread goes on
                outcome = exc
            else:
                if self._on_batch is not None:
                    self._on_batch(sum(len(x) for x, _ in live), time.perf_counter() - started)
            self._loop.call_soon_threadsafe(_deliver, live, outcome)


def _deliver(items: list[_Item], outcome: Scores | Exception) -> None:
    """On the event loop: each request's own rows of the batch's scores, or the failure."""
    start = 0
    for x, future in items:
        if not future.done():
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result({rule: values[start : start + len(x)] for rule, values in outcome.items()})
        start += len(x)

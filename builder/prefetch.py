"""Keep the network busy while the models work: a stage whose calls run ahead of the stages after it.

`datasets` runs an async map function's calls concurrently, up to a bound, while the stream is read: wrapping
the fetch stage's function so that each call runs in a background thread turns that into downloads of the
next batches overlapping the current batch's captioning. The bound (`depth` batches) also bounds the source
rows and images held in memory.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager

IDLE_SECONDS = 1.0  # a worker with nothing to do for this long ends its thread; the next call starts another


class BackgroundCalls:
    """Runs submitted calls one at a time, in submission order, on a daemon thread (an interrupted run exits
    without waiting for it); each call's result or error comes back through its future.

    It pickles as a new, idle instance: `datasets` may pickle map functions, and a thread cannot be.
    """

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __reduce__(self):
        return BackgroundCalls, ()

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        with self._lock:
            self._calls.put((fn, args, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="run-ahead", daemon=True)
                self._thread.start()
        return future

    def _work(self) -> None:
        while True:
            try:
                fn, args, future = self._calls.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():
                        self._thread = None
                        return
                continue
            if future.set_running_or_notify_cancel():  # False: the reader gave up on it
                try:
                    future.set_result(fn(*args))
                except BaseException as err:  # handed to the reader, which re-raises it
                    future.set_exception(err)


def map_ahead(rows, fn: Callable[[dict], dict], depth: int, batch_size: int):
    """`rows.map(fn, batched=True, batch_size=batch_size)`, with `fn`'s calls made in a background thread up to
    `depth` batches ahead of the one being read; batches come out in order, and an error raised by `fn` is
    raised to the reader."""
    calls = BackgroundCalls()

    async def ahead(batch: dict) -> dict:
        return await asyncio.wrap_future(calls.submit(fn, batch))

    with _async_calls_bounded_by(depth + 1):
        return rows.map(ahead, batched=True, batch_size=batch_size)


@contextmanager
def _async_calls_bounded_by(depth: int):
    """`datasets` reads its bound on concurrent async map calls when a map is created (default 1000 batches,
    which would read that many batches of the source into memory): set it for the maps created inside."""
    from datasets import config

    default = config.MAX_NUM_RUNNING_ASYNC_MAP_FUNCTIONS_IN_PARALLEL
    config.MAX_NUM_RUNNING_ASYNC_MAP_FUNCTIONS_IN_PARALLEL = depth
    try:
        yield
    finally:
        config.MAX_NUM_RUNNING_ASYNC_MAP_FUNCTIONS_IN_PARALLEL = default

"""The fetch stage's map runs ahead of its reader in a background thread: in order, bounded, errors re-raised."""

import pickle
import threading
import time

import pytest
from datasets import IterableDataset

import builder.prefetch
from builder.prefetch import BackgroundCalls, map_ahead


def _rows(n):
    return IterableDataset.from_generator(lambda: ({"i": i} for i in range(n)))


def _recording(calls, seconds=0.0):
    def double(batch):
        calls.append(batch["i"][0])
        time.sleep(seconds)
        return {"doubled": [2 * i for i in batch["i"]]}

    return double


def test_batches_come_out_in_order_and_complete():
    out = map_ahead(_rows(50), _recording([], seconds=0.001), depth=3, batch_size=4)
    assert [row["doubled"] for row in out] == [2 * i for i in range(50)]


def test_calls_run_ahead_by_at_most_depth_batches_while_the_reader_works():
    calls = []
    batches = map_ahead(_rows(40), _recording(calls), depth=2, batch_size=4).iter(batch_size=4)
    assert next(batches)["doubled"] == [0, 2, 4, 6]
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # room to overrun, if it would
    assert calls == [0, 4, 8], "the batch read plus 2 ahead, no more"
    assert [b["doubled"][0] for b in batches] == [2 * i for i in range(4, 40, 4)]


def test_an_error_reaches_the_reader_after_the_good_batches():
    def breaks_on_the_third(batch):
        if batch["i"][0] == 8:
            raise RuntimeError("fetch broke")
        return {"doubled": batch["i"]}

    batches = map_ahead(_rows(20), breaks_on_the_third, depth=4, batch_size=4).iter(batch_size=4)
    assert [next(batches)["i"][0], next(batches)["i"][0]] == [0, 4]
    with pytest.raises(RuntimeError, match="fetch broke"):
        next(batches)


def test_the_worker_thread_ends_once_idle(monkeypatch):
    monkeypatch.setattr(builder.prefetch, "IDLE_SECONDS", 0.05)
    before = threading.active_count()
    assert list(map_ahead(_rows(8), _recording([]), depth=2, batch_size=4))
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before


def test_calls_pickle_as_a_fresh_idle_worker():
    calls = BackgroundCalls()
    assert calls.submit(sum, [1, 2]).result(timeout=5) == 3
    assert pickle.loads(pickle.dumps(calls)).submit(len, "abc").result(timeout=5) == 3

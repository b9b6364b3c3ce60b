"""Sub-batch sizing: from free memory when not fixed, halved and retried when a batch runs out of memory."""

import logging

import pytest
import torch

from map_fns.batching import MEMORY_HEADROOM, AutoBatcher


def _recording(limit=None):
    """A model stand-in that records the sizes it is called with and runs out of memory above `limit`."""
    sizes = []

    def fn(chunk):
        sizes.append(len(chunk))
        if limit is not None and len(chunk) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [item * 10 for item in chunk]

    return fn, sizes


def test_auto_size_is_free_memory_over_item_cost():
    fn, sizes = _recording()
    batcher = AutoBatcher("t", "cpu", bytes_per_item=100, free_memory=lambda: int(350 / MEMORY_HEADROOM))
    assert batcher.map(list(range(10)), fn) == [i * 10 for i in range(10)]
    assert sizes == [3, 3, 3, 1]


def test_less_free_memory_gives_smaller_batches():
    sizes_by_memory = {}
    for free in (10_000, 1_000):
        fn, sizes = _recording()
        AutoBatcher("t", "cpu", bytes_per_item=100, free_memory=lambda free=free: free).map(list(range(64)), fn)
        sizes_by_memory[free] = max(sizes)
    assert sizes_by_memory[1_000] < sizes_by_memory[10_000]


def test_without_a_memory_reading_the_whole_batch_goes_at_once():
    fn, sizes = _recording()
    AutoBatcher("t", "cpu", bytes_per_item=10**12, free_memory=lambda: None).map(list(range(7)), fn)
    assert sizes == [7]


def test_even_a_tiny_free_memory_runs_one_item_at_a_time():
    fn, sizes = _recording()
    AutoBatcher("t", "cpu", bytes_per_item=100, free_memory=lambda: 0).map([1, 2, 3], fn)
    assert sizes == [1, 1, 1]


def test_fixed_size_overrides_free_memory():
    fn, sizes = _recording()
    AutoBatcher("t", "cpu", bytes_per_item=100, fixed_size=4, free_memory=lambda: 0).map(list(range(10)), fn)
    assert sizes == [4, 4, 2]


def test_out_of_memory_halves_and_retries_without_losing_or_reordering_items(caplog):
    fn, sizes = _recording(limit=3)
    batcher = AutoBatcher("caption", "cpu", bytes_per_item=1, fixed_size=16)
    with caplog.at_level(logging.WARNING, logger="map_fns.batching"):
        assert batcher.map(list(range(20)), fn) == [i * 10 for i in range(20)]
    assert sizes == [16, 8, 4] + [2] * 10
    assert "caption: out of memory at 16 items" in caplog.text
    fn, later_sizes = _recording(limit=3)
    batcher.map(list(range(6)), fn)  # the lowered size is remembered: no new failures
    assert max(later_sizes) <= 2


def test_out_of_memory_with_one_item_is_raised():
    fn, _ = _recording(limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        AutoBatcher("t", "cpu", bytes_per_item=1).map([1, 2], fn)


def test_other_errors_are_not_retried():
    calls = []

    def fn(chunk):
        calls.append(len(chunk))
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        AutoBatcher("t", "cpu", bytes_per_item=1).map([1, 2, 3, 4], fn)
    assert calls == [4]


def test_a_function_dropping_results_is_an_error():
    with pytest.raises(RuntimeError, match="3 items in, 2 results out"):
        AutoBatcher("t", "cpu", bytes_per_item=1).map([1, 2, 3], lambda chunk: chunk[:2])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="--model_batch_size must be >= 0, got -1"):
        AutoBatcher("t", "cpu", bytes_per_item=1, fixed_size=-1)
    with pytest.raises(ValueError, match="bytes_per_item"):
        AutoBatcher("t", "cpu", bytes_per_item=0)

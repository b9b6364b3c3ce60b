"""How many items go through a model at once: as many as fit in free memory, halving on out-of-memory.

A stage gets a whole map batch of rows; the model sees sub-batches. Their size is `--model_batch_size` when
given, else the device's free memory divided by the stage's estimate of one item's working memory. Estimates
can be wrong and other processes can take memory, so a sub-batch that still runs out of memory is split in
half and retried, down to one item, instead of failing the run. Results never depend on the size: every row's
samples come from its own generator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MEMORY_HEADROOM = 0.8  # share of free memory a stage plans to use: the allocator fragments, other stages hold some


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device; None elsewhere (CPU memory is not what limits a batch there)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


class AutoBatcher:
    """Runs a function over items in sub-batches sized to memory; one per stage, so a halving is remembered."""

    def __init__(self, name: str, device: str | torch.device, bytes_per_item: int, fixed_size: int = 0,
                 free_memory: Callable[[], int | None] | None = None):
        if fixed_size < 0:
            raise ValueError(f"--model_batch_size must be >= 0, got {fixed_size}")
        if bytes_per_item < 1:
            raise ValueError(f"{name}: bytes_per_item must be >= 1, got {bytes_per_item}")
        self.name = name
        self.device = torch.device(device)
        self.bytes_per_item = bytes_per_item
        self.fixed_size = fixed_size
        self._free_memory = free_memory or (lambda: free_device_memory(self.device))
        self._cap: int | None = None  # lowered for good after an out-of-memory error

    def size_for(self, count: int) -> int:
        """Items per sub-batch for a batch of `count`: the fixed size, else what fits in free memory."""
        size = self.fixed_size or count
        if not self.fixed_size:
            free = self._free_memory()
            if free is not None:
                size = min(size, int(free * MEMORY_HEADROOM) // self.bytes_per_item)
        if self._cap is not None:
            size = min(size, self._cap)
        return max(1, min(size, count))

    def map(self, items: Sequence[T], fn: Callable[[Sequence[T]], list[R]]) -> list[R]:
        """`fn` over consecutive slices of `items`, results concatenated in order."""
        results: list[R] = []
        start = 0
        size = self.size_for(len(items))
        while start < len(items):
            chunk = items[start : start + size]
            try:
                out = fn(chunk)
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                ran_out = True  # handled below, outside the except block: its traceback holds the batch's tensors
            else:
                ran_out = False
            if ran_out:
                size = self._cap = max(1, len(chunk) // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                logger.warning("%s: out of memory at %d items per batch; retrying with %d", self.name,
                               len(chunk), size)
                continue
            if len(out) != len(chunk):
                raise RuntimeError(f"{self.name}: {len(chunk)} items in, {len(out)} results out")
            results.extend(out)
            start += len(chunk)
        return results

"""What a long run shows while it works: a bar on the main process, and a log line per process now and then.

The bar counts the main process's rows (every process moves at about the same pace): rows/s, ok images/s,
the share of rows that ended `ok`, and an ETA when the number of rows is known. Every process also logs its
own line every `log_every` seconds, so a slow or stuck rank shows up in the job's log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from map_fns.status import OK

logger = logging.getLogger(__name__)


def rank_share(total: int | None, rank: int, world_size: int) -> int | None:
    """Rows process `rank` gets when `total` rows are dealt out one by one (--max_samples); None if unknown."""
    if total is None:
        return None
    return len(range(rank, total, world_size))


class RankProgress:
    """One process's progress: a tqdm bar when `show_bar`, a log line every `log_every` seconds always."""

    def __init__(self, rank: int, world_size: int, total: int | None, show_bar: bool, done: int = 0,
                 log_every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        """`done`: rows an earlier, interrupted run of this process already wrote (the bar starts there)."""
        self.rank, self.log_every, self.clock = rank, log_every, clock
        self.rows = self.ok = 0
        self.started = self.last_log = clock()
        self.bar = tqdm(total=rank_share(total, rank, world_size), initial=done, unit="row", disable=not show_bar,
                        desc=f"captioning (rank {rank} of {world_size})")

    def update(self, statuses: list[str]) -> None:
        self.rows += len(statuses)
        self.ok += sum(status == OK for status in statuses)
        elapsed = max(self.clock() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.ok / elapsed:.1f} ok images/s, {self.ok / max(self.rows, 1):.0%} ok",
                                 refresh=False)
        self.bar.update(len(statuses))
        if self.clock() - self.last_log >= self.log_every:
            self.last_log = self.clock()
            logger.info("rank %d: %d rows (%.1f rows/s), %d ok (%.0f%%)", self.rank, self.rows, self.rows / elapsed,
                        self.ok, 100 * self.ok / max(self.rows, 1))

    def close(self) -> None:
        self.bar.close()

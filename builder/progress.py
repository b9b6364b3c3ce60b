"""What a long run shows while it works: a bar on one worker, and a log line per worker now and then.

The bar starts at the rows of the tasks already done when the worker started and counts this worker's rows from
there: rows/s, ok images/s, the share of rows that ended `ok`, and an ETA (that assumes this worker alone; with
N workers the run ends about N times sooner). Every worker also logs its own line every `log_every` seconds, so
a slow or stuck worker shows up in the job's log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from map_fns.status import OK

logger = logging.getLogger(__name__)


class WorkerProgress:
    """One worker's progress: a tqdm bar when `show_bar`, a log line every `log_every` seconds always."""

    def __init__(self, worker: str, total: int | None, show_bar: bool, done: int = 0,
                 log_every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        """`total`: the run's rows, if known; `done`: rows of tasks finished before (the bar starts there)."""
        self.worker, self.log_every, self.clock = worker, log_every, clock
        self.rows = self.ok = 0
        self.started = self.last_log = clock()
        self.bar = tqdm(total=total, initial=done, unit="row", disable=not show_bar,
                        desc=f"captioning (worker {worker})")

    def update(self, statuses: list[str]) -> None:
        self.rows += len(statuses)
        self.ok += sum(status == OK for status in statuses)
        elapsed = max(self.clock() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.ok / elapsed:.1f} ok images/s, {self.ok / max(self.rows, 1):.0%} ok",
                                 refresh=False)
        self.bar.update(len(statuses))
        if self.clock() - self.last_log >= self.log_every:
            self.last_log = self.clock()
            logger.info("worker %s: %d rows (%.1f rows/s), %d ok (%.0f%%)", self.worker, self.rows, self.rows / elapsed,
                        self.ok, 100 * self.ok / max(self.rows, 1))

    def close(self) -> None:
        self.bar.close()

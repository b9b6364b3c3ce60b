"""Stopping cleanly when the scheduler says so: Slurm and spot instances send SIGTERM, a user presses Ctrl-C.

The first signal only asks the write loop to stop after the batch in hand: chunks already written and the task's
progress record stay consistent, and the worker gives its task back (drops its lease), so any worker takes it
up again at once; the rows since the last chunk are computed again then. A second
signal stops at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """The run stopped on a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Set by a signal; read by the write loop between batches."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(worker: str) -> Iterator[StopRequest]:
    """While inside, SIGTERM and SIGINT set the yielded request instead of killing the process."""
    request = StopRequest()

    def handle(signum, frame):
        if request:
            raise KeyboardInterrupt  # asked twice: stop now
        request.signum = signum
        logger.warning("worker %s: %s received, stopping after the batch in hand", worker, signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""How a command ends when something stops it: one line for the user, and the exit status a scheduler reads.

A `ConfigError` is the same in every process of a launch: every worker runs the same checks on the same flags and
output. So only the main process prints it, and the user reads it once, however many processes
`accelerate launch` started.
"""

from __future__ import annotations

import os
import sys

from builder.config import ConfigError
from builder.interrupt import RunInterrupted


def is_main_process() -> bool:
    """Whether this is the run's main process; `accelerate launch` (torchrun) sets RANK for each process."""
    return os.environ.get("RANK", "0") == "0"


def failed(err: Exception) -> int:
    """Print `err` as its one line and return the status: 2 for bad input, 128 + signal for a stop on a
    signal (resumable), 1 for anything else."""
    if isinstance(err, RunInterrupted):
        print(f"interrupted: {err}", file=sys.stderr)
        return err.exit_code
    if not isinstance(err, ConfigError) or is_main_process():
        print(f"error: {err}", file=sys.stderr)
    return 2 if isinstance(err, ConfigError) else 1

"""How a command ends when something stops it: one line for the user, and the exit status a scheduler reads."""

from __future__ import annotations

import sys

from builder.config import ConfigError
from builder.interrupt import RunInterrupted


def failed(err: Exception) -> int:
    """Print `err` as its one line and return the status: 2 for bad input, 128 + signal for a stop on a
    signal (resumable), 1 for anything else."""
    if isinstance(err, RunInterrupted):
        print(f"interrupted: {err}", file=sys.stderr)
        return err.exit_code
    print(f"error: {err}", file=sys.stderr)
    return 2 if isinstance(err, ConfigError) else 1

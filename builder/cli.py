"""How a command ends when something stops it: one line for the user, and the exit status a scheduler reads.

A `ConfigError` is the same in every process of a run: either every process found it by the same checks, or the
main process found it and `agree_on` handed it to the others. So only the main process prints it, and the user
reads it once, however many processes `accelerate launch` started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

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


def agree_on(state, check: Callable[[], None]) -> None:
    """Run `check` on the main process only (network look-ups, taking the output folder) and raise the
    `ConfigError` it raised, if any, in every process, so that all stop together instead of waiting for it."""
    from accelerate.utils import broadcast_object_list

    verdict = [None]
    if state.is_main_process:
        try:
            check()
        except ConfigError as err:
            verdict = [str(err)]
    if state.num_processes > 1:
        broadcast_object_list(verdict, from_process=0)
        if verdict[0] is not None:  # the run ends here: every process has the verdict before any leaves the
            state.wait_for_everyone()  # group (gloo aborts a process whose peer vanished mid-collective)
            state.destroy_process_group()
    if verdict[0] is not None:
        raise ConfigError(verdict[0])

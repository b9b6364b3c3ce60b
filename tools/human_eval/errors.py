"""The one error the human evaluation reports to the user instead of a traceback."""

from __future__ import annotations

from map_fns.flags import ConfigError


class HumanEvalError(ConfigError):
    """Bad input (dataset, column, settings, database) the user must fix; the message names the bad value.

    A `ConfigError` like every other user error of the project, so whatever reports those (one line, exit
    status 2) reports this one too; its own name says which tool found the problem."""

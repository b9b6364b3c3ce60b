"""The one error the human evaluation reports to the user instead of a traceback."""

from __future__ import annotations


class HumanEvalError(ValueError):
    """Bad input (dataset, column, settings, database) the user must fix; the message names the bad value."""

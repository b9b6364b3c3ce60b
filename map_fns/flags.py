"""Checking flag values, shared by every config section (stages here, the run's own in `builder.config`,
the tools'): one error type whose message is the one line the user sees."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad flag, key or value; its message is the one line the user sees."""

"""Moved to `output.durable`. Only builder/config.py still imports it from here; delete this file once it
imports `output.durable` instead."""

from output.durable import write_text_durably  # noqa: F401

"""Checking flag values, shared by every config section (the stages' here, the run's in `builder.config`, the
tools'): one error type, and small checks that raise it with the one line the user sees,
`--flag must RULE, got VALUE`.

Cheap to import on purpose (argparse only: no torch, no transformers), so a bad flag fails in a second,
before any model loads.
"""

from __future__ import annotations

import argparse

NONE = "none"  # a model flag's value that switches its stage off

_CLIP_SPEC_FORMS = "expected MODEL/PRETRAINED (e.g. ViT-L-14/openai), hf-hub:ORG/REPO or local-dir:/PATH"


class ConfigError(ValueError):
    """A bad flag, key or value; its message is the one line the user sees."""


class FlagParser(argparse.ArgumentParser):
    """An argparse parser whose errors raise `ConfigError` instead of printing usage and exiting, so that every
    entry point reports a bad flag the same way (one line, exit status 2)."""

    def error(self, message):
        raise ConfigError(message)


def require(config, flag: str, holds: bool, rule: str) -> None:
    """Unless `holds`, raise `--flag must RULE, got VALUE` (e.g. RULE `be >= 1`), VALUE read from `config`."""
    if not holds:
        raise ConfigError(f"--{flag} must {rule}, got {getattr(config, flag)!r}")


def at_least(config, flag: str, low: int, *, integer: bool = False) -> None:
    """`config.flag >= low`; with `integer`, also an int (a float from the Python API is refused too)."""
    value = getattr(config, flag)
    if integer:
        require(config, flag, isinstance(value, int) and value >= low, f"be an integer >= {low}")
    else:
        require(config, flag, value >= low, f"be >= {low}")


def above(config, flag: str, low: float) -> None:
    require(config, flag, getattr(config, flag) > low, f"be > {low}")


def in_range(config, flag: str, low: float, high: float) -> None:
    """`low < config.flag <= high`."""
    require(config, flag, low < getattr(config, flag) <= high, f"be in ({low}, {high}]")


def model_or_none(config, flag: str) -> None:
    """A model flag holds a Hub id or a path (not checked here: resolving it needs the network), or NONE."""
    value = getattr(config, flag)
    require(config, flag, isinstance(value, str) and bool(value.strip()), f"name a model or be {NONE!r}")


def clip_spec(config, flag: str, *, none_allowed: bool = False) -> None:
    """An open_clip spec (`parse_clip_spec`), or NONE when the stage may be switched off."""
    spec = getattr(config, flag)
    if none_allowed and spec == NONE:
        return
    try:
        parse_clip_spec(spec)
    except ConfigError as err:
        raise ConfigError(f"--{flag}: {err}") from None


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """Split a CLIP spec into open_clip's `(model_name, pretrained)`; schema specs carry their own weights.

    Syntax only: open_clip itself rejects unknown models and tags when the scorer loads, before any row.
    """
    if not isinstance(spec, str) or not spec or spec != spec.strip():
        raise ConfigError(f"invalid CLIP spec {spec!r}: {_CLIP_SPEC_FORMS}")
    if spec.startswith("hf-hub:"):
        org, _, repo = spec.removeprefix("hf-hub:").partition("/")
        if not org or not repo or "/" in repo:
            raise ConfigError(f"invalid CLIP spec {spec!r}: {_CLIP_SPEC_FORMS}")
        return spec, None
    if spec.startswith("local-dir:"):
        if not spec.removeprefix("local-dir:"):
            raise ConfigError(f"invalid CLIP spec {spec!r}: {_CLIP_SPEC_FORMS}")
        return spec, None
    name, _, pretrained = spec.partition("/")  # pretrained: a tag, or a checkpoint path (may hold '/')
    if not name or not pretrained or ":" in name:
        raise ConfigError(f"invalid CLIP spec {spec!r}: {_CLIP_SPEC_FORMS}")
    return name, pretrained

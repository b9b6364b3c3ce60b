"""Filters on the source's own numeric columns (LAION's `punsafe`, `pwatermark`, ...), applied before any request.

`--filter "punsafe<=0.5"` keeps a row only when its `punsafe` holds; `--max_punsafe X` and `--max_pwatermark X`
say the same for those two columns. A row that fails becomes `filtered` with the reason in `error`. A missing or
non-numeric value fails too: a filter exists to keep rows out, so a row it cannot judge stays out.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from map_fns.flags import ConfigError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
             ">": operator.gt}
_FORM = re.compile(r"^\s*([^<>=!\s]+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True)
class RowFilter:
    """`column op limit`: a row passes when its value in `column` compares so with `limit`."""

    column: str
    op: str
    limit: float

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.limit:g}"

    def reason(self, value) -> str | None:
        """None when `value` passes, else why not, in one line."""
        if value is None:
            return f"{self.column} is missing (filter {self})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return f"{self.column} {value!r} is not a number (filter {self})"
        if OPERATORS[self.op](value, self.limit):
            return None
        return f"{self.column} {value:g} fails filter {self}"


def parse_filter(text: str) -> RowFilter:
    """`COLUMN OP NUMBER` (OP one of <=, <, >=, >, ==, !=) as a `RowFilter`; a one-line `ConfigError` otherwise."""
    match = _FORM.match(text) if isinstance(text, str) else None
    try:
        limit = float(match.group(3)) if match else math.nan
    except ValueError:
        limit = math.nan
    if not match or not math.isfinite(limit):
        raise ConfigError(f"--filter must be COLUMN OP NUMBER with OP one of {', '.join(OPERATORS)} "
                          f"(e.g. 'punsafe<=0.5'), got {text!r}")
    return RowFilter(match.group(1), match.group(2), limit)


def row_filters(filters: list[str], max_punsafe: float | None, max_pwatermark: float | None) -> list[RowFilter]:
    """Every filter the flags ask for: `--filter`s as given, then `--max_punsafe` and `--max_pwatermark`."""
    parsed = [parse_filter(text) for text in filters]
    for column, limit in (("punsafe", max_punsafe), ("pwatermark", max_pwatermark)):
        if limit is not None:
            parsed.append(RowFilter(column, "<=", float(limit)))
    return parsed


def filter_reasons(filters: list[RowFilter], batch: dict[str, list]) -> list[str | None]:
    """Per row of `batch`, the first failed filter's reason, or None when it passes them all."""
    size = len(batch["URL"])
    reasons: list[str | None] = [None] * size
    for row_filter in filters:
        values = batch[row_filter.column]
        for i in range(size):
            if reasons[i] is None:
                reasons[i] = row_filter.reason(values[i])
    return reasons

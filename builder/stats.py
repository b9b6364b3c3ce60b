"""Per-task counters (rows per status, per error reason, seconds per stage), merged when the run finishes."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable

# Parts of an error message that name one host, address, port, size or score: counted per row they would make
# millions of distinct "reasons" on a web-scale run, so they are folded into placeholders.
_VARYING = [
    (re.compile(r"(?<=lookup of )\S+|(?<=connect to )\S+?(?=:\d+:)"), "<host>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\[?[0-9a-fA-F]*:[0-9a-fA-F:]*:[0-9a-fA-F]+\]?"), "<address>"),
    (re.compile(r"(?<=<host>):\d+"), ""),
    (re.compile(r"\b\d+x\d+\b"), "<W>x<H>"),
    (re.compile(r"\S+(?= (?:fails filter|is above --max_punsafe_pred) )"), "<value>"),  # a row's score
]


def error_reason(error: str) -> str:
    """An error message with the row-specific parts replaced, so that alike failures count together."""
    for pattern, placeholder in _VARYING:
        error = pattern.sub(placeholder, error)
    return error


class RunStats:
    """What one process saw: how many rows, how each ended, why those that failed did, and where time went."""

    def __init__(self, saved: dict | None = None):
        """Empty, or continuing from `to_dict()` of an earlier part of the same run."""
        saved = saved or {}
        self.statuses: Counter[str] = Counter(saved.get("statuses", {}))
        self.errors: Counter[str] = Counter(saved.get("errors", {}))
        self.stage_seconds: Counter[str] = Counter(saved.get("stage_seconds", {}))
        self.reused_rows: int = saved.get("reused_rows", 0)  # ok rows that copied an earlier row's results
        self.active_seconds: float = saved.get("active_seconds", 0.0)  # working on the task, over all attempts

    def add_reused(self, count: int) -> None:
        self.reused_rows += count

    def add(self, batch: dict[str, list]) -> None:
        self.statuses.update(batch["status"])
        self.errors.update(f"{status}: {error_reason(error)}"
                           for status, error in zip(batch["status"], batch["error"]) if error)

    def timed(self, stage: str, fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        """`fn`, adding the seconds each call takes to this stage's total (a stage may run in another thread)."""
        def run(batch: dict) -> dict:
            start = time.perf_counter()
            try:
                return fn(batch)
            finally:
                self.stage_seconds[stage] += time.perf_counter() - start

        return run

    def to_dict(self) -> dict:
        return {"statuses": dict(self.statuses), "errors": dict(self.errors),
                "stage_seconds": dict(self.stage_seconds), "reused_rows": self.reused_rows,
                "active_seconds": self.active_seconds}


def merge_stats(parts: list[dict]) -> dict:
    """Sum the tasks' counters into `{"rows", "statuses", "errors", "stage_seconds", "reused_rows",
    "worker_seconds"}`, most common first.

    Stage seconds add up across tasks: they say where the compute went, not how long the run took.
    `worker_seconds` is the workers' time spent on the tasks (interruptions not counted), so rows per
    worker-second is one worker's throughput, however many ran. Reused rows count work done, so rows redone
    after an interruption count again.
    """
    statuses, errors, seconds, reused, working = Counter(), Counter(), Counter(), 0, 0.0
    for part in parts:
        statuses.update(part.get("statuses", {}))
        errors.update(part.get("errors", {}))
        seconds.update(part.get("stage_seconds", {}))
        reused += part.get("reused_rows", 0)
        working += part.get("active_seconds", 0.0)
    return {"rows": sum(statuses.values()), "statuses": dict(statuses.most_common()),
            "errors": dict(errors.most_common()),
            "stage_seconds": {stage: round(total, 3) for stage, total in seconds.items()}, "reused_rows": reused,
            "worker_seconds": round(working, 3)}


def format_stats(stats: dict, max_errors: int = 10) -> str:
    """A small text table for the end-of-run log."""
    lines = [f"{stats['rows']} rows"]
    lines += [f"  {status:<14} {count:>10}  {count / max(stats['rows'], 1):6.1%}"
              for status, count in stats["statuses"].items()]
    if stats.get("worker_seconds"):
        lines.append(f"  {stats['rows'] / stats['worker_seconds']:.2f} rows per worker-second "
                     f"({stats['worker_seconds']:.1f} worker-seconds in all)")
    if stats.get("reused_rows"):
        lines.append(f"  {stats['reused_rows']} ok rows repeated an earlier row's URL or image and reused its captions")
    if stats.get("stage_seconds"):
        lines.append("seconds per stage (summed over processes):")
        lines += [f"  {stage:<14} {seconds:>10.1f}" for stage, seconds in stats["stage_seconds"].items()]
    if stats["errors"]:
        lines.append("most common errors:")
        lines += [f"  {count:>8}  {reason}" for reason, count in list(stats["errors"].items())[:max_errors]]
    return "\n".join(lines)

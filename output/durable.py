"""Files that are complete or absent: written beside their final name, synced, then renamed into place.

A reader, a resumed run or a push sees the old file or the new one, never half of one, whatever happens to
the writer (killed, out of disk, power lost after the rename). Temp names carry the writer's pid and thread,
so two writers never share one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique to this writer (process and thread): `.NAME.PID-THREAD.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")


def stale_temp_files(folder: Path, older_than: float) -> list[Path]:
    """Temp files under `folder` (see `temp_path`) last written more than `older_than` seconds ago: what writers
    killed mid-write left behind."""
    cutoff = time.time() - older_than
    return [path for path in Path(folder).rglob(".*.tmp") if path.is_file() and path.stat().st_mtime < cutoff]


def write_durably(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temp)`, fsync, rename over `path`, fsync the folder; a failed write leaves no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def write_text_durably(path: Path, text: str) -> None:
    write_durably(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_durably(path: Path, value) -> None:
    write_text_durably(path, json.dumps(value, indent=1))


def sync_dir(path: Path) -> None:
    """fsync a directory, so a rename into it survives a power loss, not just a killed process."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

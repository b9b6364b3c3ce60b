"""One run per output folder at a time.

Two runs writing one folder would interleave chunks, records and card (and once shared temp file names). The
main process holds an exclusive `flock` on the folder's lock file (`output.layout.LOCK_FILE`) while its run lasts;
the kernel drops the lock when the process ends, however it ends, so a killed run never leaves the folder locked.
The file names the holder, for the error line a second run gets. (On NFS, Linux maps `flock` to a lock every
client sees.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from map_fns.flags import ConfigError
from output.layout import lock_path


@contextmanager
def output_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir`'s lock inside the block (creating the folder); raise `ConfigError` naming the run that
    holds it already."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(output_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"--output_dir {output_dir} is in use by another run ({holder}); wait for it to end, "
                              "or stop it, before starting this one") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

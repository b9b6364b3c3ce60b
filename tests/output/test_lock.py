"""One run per output folder: a second holder is refused with one line naming the first, and a holder killed
with SIGKILL leaves nothing stuck."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from builder.config import ConfigError
from output.lock import output_lock

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\nfrom output.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _hold_in_another_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(tmp_path):
    folder = tmp_path / "out"
    holder = _hold_in_another_process(folder)
    try:
        with pytest.raises(ConfigError) as refused:
            with output_lock(folder):
                pass
        message = str(refused.value)
        assert "\n" not in message and str(folder) in message and f"pid {holder.pid}" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()
    with output_lock(folder):  # the kernel dropped the killed holder's lock
        assert f"pid {os.getpid()}" in (folder / ".lock").read_text()


def test_the_lock_is_released_when_the_block_ends(tmp_path):
    with output_lock(tmp_path / "out"):
        pass
    holder = _hold_in_another_process(tmp_path / "out")  # would block forever if still held here
    holder.kill()
    holder.wait(timeout=10)
    holder.stdout.close()

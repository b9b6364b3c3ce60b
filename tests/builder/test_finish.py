"""`python -m builder.finish OUTPUT_DIR`: finishing on demand, idempotent, safe when two run at once, and
refused in one line while tasks are left."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
REPO = Path(__file__).resolve().parents[2]
FINISHED = ("README.md", "gallery.html", "stats.json", "tasks/finished.json")


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_models) -> Path:
    """A finished run of 4 sample rows in 2 tasks."""
    out = tmp_path_factory.mktemp("finish") / "out"
    done = subprocess.run(
        [sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--output_dir", str(out), "--max_samples", "4", "--rows_per_task", "2", "--rows_per_chunk", "2",
         "--batch_size", "2"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _finish(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder.finish", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(240)
def test_two_finishes_at_once_rebuild_the_same_card_gallery_and_stats(output):
    before = {name: (output / name).read_bytes() for name in FINISHED}
    for name in FINISHED:
        (output / name).unlink()
    both = [_finish(str(output)) for _ in range(2)]
    results = [proc.communicate(timeout=200) for proc in both]
    assert [proc.returncode for proc in both] == [0, 0], [err[-2000:] for _, err in results]
    assert {name: (output / name).read_bytes() for name in FINISHED} == before
    assert not [path for path in output.rglob(".*") if path.is_file()], "temp files left behind"


@pytest.mark.timeout(120)
def test_finishing_with_a_task_left_is_refused_in_one_line(output, tmp_path):
    partial = tmp_path / "partial"
    subprocess.run(["cp", "-r", str(output), str(partial)], check=True)
    (partial / "tasks" / "done" / "000001.json").unlink()
    proc = _finish(str(partial))
    _, err = proc.communicate(timeout=100)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1] == (f"error: {partial}: 1 of 2 tasks are not done yet; run the build command "
                                            "again (any number of workers) to finish them")


@pytest.mark.timeout(60)
def test_a_folder_without_a_run_or_a_bad_command_line_is_refused(tmp_path):
    proc = _finish(str(tmp_path))
    _, err = proc.communicate(timeout=50)
    assert proc.returncode == 2 and err.strip().splitlines()[-1] == (
        f"error: {tmp_path} holds no run of this builder to finish (no build_config.yaml and tasks/plan.json)")
    proc = _finish()
    _, err = proc.communicate(timeout=50)
    assert proc.returncode == 2 and err.strip() == "usage: python -m builder.finish OUTPUT_DIR"


def test_the_merged_stats_count_every_row_once(output):
    stats = json.loads((output / "stats.json").read_text())
    assert stats["rows"] == 4 and sum(stats["statuses"].values()) == 4


@pytest.mark.timeout(120)
def test_finishing_removes_what_killed_writers_left_and_nothing_a_live_one_writes(output, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(output), str(copy)], check=True)
    stale = copy / "tasks" / "done" / ".000001.json.4242-4242.tmp"  # a worker killed writing its done marker
    fresh = copy / "data" / ".train-000001-00000.parquet.4343-4343.tmp"  # a duplicate worker writing right now
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # older than the run's lease (300 s)
    proc = _finish(str(copy))
    _, err = proc.communicate(timeout=100)
    assert proc.returncode == 0, err[-2000:]
    assert not stale.exists() and fresh.exists()

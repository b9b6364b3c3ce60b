"""Kill a 2-process run at any moment, run the same command again, and get exactly a clean run's output."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]
ROWS = 200
ROWS_PER_CHUNK = 16


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24 + i % 7, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """ROWS embedded images (no network), a few corrupt, in 4 row groups (2 per process)."""
    path = tmp_path_factory.mktemp("source") / "rows.parquet"
    images = [b"not an image" if i % 23 == 5 else _jpeg(i) for i in range(ROWS)]
    pq.write_table(pa.table({"url": [f"https://example.invalid/{i}.jpg" for i in range(ROWS)],
                             "caption": [f"alt text {i}" for i in range(ROWS)],
                             "image": pa.array(images, pa.binary())}), path, row_group_size=ROWS // 4)
    return path


def _command(source: Path, output: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
            "build.py", "--preset", "tiny", "--cache_dir", str(cache_dir), "--source", str(source),
            "--output_dir", str(output), "--batch_size", "8", "--rows_per_chunk", str(ROWS_PER_CHUNK), *extra]


def _start(command: list[str]) -> subprocess.Popen:
    """In its own process group, as a job under a scheduler: a signal to the group reaches every rank."""
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _recorded_rows(output: Path) -> int:
    rows = 0
    for path in (output / "progress").glob("rank-*.json"):
        try:
            rows += json.loads(path.read_text())["rows"]
        except (OSError, ValueError):  # being replaced right now
            pass
    return rows


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until `predicate()` or the process ends; True if the predicate held while it ran."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _finish(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _rows_by_url(output: Path) -> dict[str, dict]:
    rows = [row for path in sorted((output / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    by_url = {row["URL"]: row for row in rows}
    assert len(by_url) == len(rows), "a row was written twice"
    return by_url


@pytest.fixture(scope="module")
def clean(source, tmp_path_factory, tiny_models) -> dict[str, dict]:
    output = tmp_path_factory.mktemp("clean")
    _finish(_command(source, output, Path(tiny_models.captioner).parents[1]))
    rows = _rows_by_url(output)
    assert len(rows) == ROWS
    return rows


def _assert_same_output(output: Path, clean: dict[str, dict]) -> None:
    rows = _rows_by_url(output)
    assert rows.keys() == clean.keys()
    for url, row in rows.items():
        assert row == clean[url], url  # every column, captions and similarities included
    assert not list((output / "data").glob(".*")), "temp files left behind"
    statuses = [json.loads(p.read_text())["statuses"] for p in (output / "stats").glob("rank-*.json")]
    for status in {row["status"] for row in clean.values()}:  # stats count each row once across the restarts
        assert sum(s.get(status, 0) for s in statuses) == sum(row["status"] == status for row in clean.values())


@pytest.mark.timeout(600)
def test_killed_at_random_moments_then_resumed_equals_a_clean_run(source, tmp_path, tiny_models, clean):
    cache_dir = Path(tiny_models.captioner).parents[1]
    output = tmp_path / "out"
    command = _command(source, output, cache_dir)
    rng = random.Random(0)
    kills = 0
    for threshold in (ROWS_PER_CHUNK, ROWS // 2, ROWS - 2 * ROWS_PER_CHUNK):
        proc = _start(command)
        reached = _wait_for(lambda: _recorded_rows(output) >= threshold, proc)
        time.sleep(rng.uniform(0, 0.5))
        _kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += reached
    # One kill while a chunk is being written: wait for a temp chunk file to appear, kill at once.
    proc = _start(command)
    caught = _wait_for(lambda: any((output / "data").glob(".train-*.tmp")), proc)
    _kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    # Whether or not the race was won, leave what such a kill leaves: a half-written temp file and a chunk
    # renamed into place whose record was never written.
    record = json.loads((output / "progress" / "rank-00000.json").read_text())
    stray = output / "data" / f"train-00000-{record['chunks']:05d}.parquet"
    if not record["done"]:
        stray.write_bytes(b"PAR1 half a chunk")
    (output / "data" / f".train-00001-{99:05d}.parquet.tmp").write_bytes(b"PAR1 half")
    assert kills >= 2 and _recorded_rows(output) < ROWS, "the kills landed after the run had finished"
    _finish(command)
    _assert_same_output(output, clean)
    print(f"temp-file race won: {caught}")


@pytest.mark.timeout(300)
def test_sigterm_stops_within_seconds_with_a_resumable_state(source, tmp_path, tiny_models, clean):
    command = _command(source, tmp_path / "out", Path(tiny_models.captioner).parents[1])
    proc = _start(command)
    assert _wait_for(lambda: _recorded_rows(tmp_path / "out") >= ROWS_PER_CHUNK, proc), proc.communicate()[1][-3000:]
    sent = time.monotonic()
    _kill_group(proc, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert proc.returncode != 0
    assert stopped_after < 10, f"took {stopped_after:.1f}s to stop"
    assert "run the same command again to resume" in stderr
    assert 0 < _recorded_rows(tmp_path / "out") < ROWS
    _finish(command)
    _assert_same_output(tmp_path / "out", clean)


def _single(output: Path, cache_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(cache_dir),
                           "--output_dir", str(output), "--max_samples", "3", *extra],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)


def test_a_changed_config_is_refused_naming_the_key_and_overwrite_starts_over(tmp_path, tiny_models):
    cache_dir = Path(tiny_models.captioner).parents[1]
    output = tmp_path / "out"
    assert _single(output, cache_dir).returncode == 0
    first = sorted(p.name for p in (output / "data").glob("*.parquet"))
    refused = _single(output, cache_dir, "--top_p", "0.5", "--seed", "3")
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("error:") and "top_p 0.2427084604681384 -> 0.5" in message and "seed 0 -> 3" in message
    assert "--overwrite" in message
    assert sorted(p.name for p in (output / "data").glob("*.parquet")) == first  # nothing touched
    again = _single(output, cache_dir)  # the same command: nothing left to do
    assert again.returncode == 0 and "resuming" not in again.stderr
    assert _single(output, cache_dir, "--top_p", "0.5", "--overwrite").returncode == 0
    assert json.loads((output / "progress" / "run.json").read_text())["top_p"] == 0.5


def test_an_output_dir_with_unrecorded_parquet_is_refused(tmp_path, tiny_models):
    output = tmp_path / "out"
    (output / "data").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), output / "data" / "train-00000-00000.parquet")
    refused = _single(output, Path(tiny_models.captioner).parents[1])
    assert refused.returncode == 2 and "--overwrite" in refused.stderr


@pytest.mark.timeout(300)
def test_a_failed_rank_is_named_and_the_same_command_finishes_the_run(source, tmp_path, tiny_models, clean):
    output = tmp_path / "out"
    command = _command(source, output, Path(tiny_models.captioner).parents[1])
    obstacle = output / "progress" / ".rank-00001.json.tmp"  # rank 1 cannot save its record after its first chunk
    obstacle.mkdir(parents=True)
    failed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "rank 1 failed; the 0 rows (0 chunks) it recorded are kept: run the same command again" in failed.stderr
    obstacle.rmdir()
    _finish(command)
    _assert_same_output(output, clean)


def test_a_process_with_an_empty_share_finishes_cleanly(source, tmp_path, tiny_models):
    output = tmp_path / "out"
    _finish(_command(source, output, Path(tiny_models.captioner).parents[1], "--max_samples", "1"))
    assert [json.loads((output / "progress" / f"rank-{r:05d}.json").read_text())["rows"] for r in (0, 1)] == [1, 0]
    assert pq.read_table(sorted((output / "data").glob("*.parquet"))).num_rows == 1

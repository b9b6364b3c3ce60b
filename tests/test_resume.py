"""Kill a 2-process run at any moment, run the same command again, and get exactly a clean run's output."""

import io
import json
import os
import random
import re
import signal
import socket
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


LAYOUTS = {  # row group size of the one source file
    "row groups": ROWS // 4,  # 4 row groups: each process reads 2 whole ones
    "one row group": ROWS,  # split row by row, where resuming once duplicated rows
}


def _write_source(path: Path, layout: str) -> Path:
    """ROWS embedded images (no network), a few corrupt, in one file laid out as `layout` says."""
    images = [b"not an image" if i % 23 == 5 else _jpeg(i) for i in range(ROWS)]
    pq.write_table(pa.table({"url": [f"https://example.invalid/{i}.jpg" for i in range(ROWS)],
                             "caption": [f"alt text {i}" for i in range(ROWS)],
                             "image": pa.array(images, pa.binary())}), path, row_group_size=LAYOUTS[layout])
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("source")
    return {layout: _write_source(folder / f"{layout.replace(' ', '-')}.parquet", layout) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def source(sources) -> Path:
    return sources["row groups"]


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
def clean_runs(sources, tmp_path_factory, tiny_models):
    """An uninterrupted run's rows by URL, per source layout, made once when first asked for."""
    made: dict[str, dict[str, dict]] = {}

    def clean(layout: str) -> dict[str, dict]:
        if layout not in made:
            output = tmp_path_factory.mktemp("clean")
            _finish(_command(sources[layout], output, Path(tiny_models.captioner).parents[1]))
            made[layout] = _rows_by_url(output)
            assert len(made[layout]) == ROWS
        return made[layout]

    return clean


@pytest.fixture(scope="module")
def clean(clean_runs) -> dict[str, dict]:
    return clean_runs("row groups")


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
@pytest.mark.parametrize("layout", LAYOUTS)
def test_killed_at_random_moments_then_resumed_equals_a_clean_run(sources, tmp_path, tiny_models, clean_runs, layout):
    cache_dir = Path(tiny_models.captioner).parents[1]
    output = tmp_path / "out"
    command = _command(sources[layout], output, cache_dir)
    rng = random.Random(0)
    kills = 0
    for threshold in (ROWS_PER_CHUNK, ROWS // 2):
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
    _assert_same_output(output, clean_runs(layout))
    print(f"temp-file race won: {caught}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("layout", "signum"), [("one row group", signal.SIGINT), ("row groups", signal.SIGTERM)])
def test_a_signal_stops_within_seconds_with_a_resumable_state(sources, tmp_path, tiny_models, clean_runs, layout,
                                                              signum):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM."""
    output = tmp_path / "out"
    command = _command(sources[layout], output, Path(tiny_models.captioner).parents[1])
    proc = _start(command)
    assert _wait_for(lambda: _recorded_rows(output) >= ROWS_PER_CHUNK, proc), proc.communicate()[1][-3000:]
    sent = time.monotonic()
    _kill_group(proc, signum)
    _, stderr = proc.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert proc.returncode != 0
    assert stopped_after < 10, f"took {stopped_after:.1f}s to stop"
    assert "run the same command again to resume" in stderr
    assert 0 < _recorded_rows(output) < ROWS
    _finish(command)
    _assert_same_output(output, clean_runs(layout))


@pytest.mark.timeout(300)
def test_a_run_into_a_folder_in_use_is_refused_once_and_writes_nothing(source, tmp_path, tiny_models):
    output = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom output.lock import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
                               str(output)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run(_command(source, output, Path(tiny_models.captioner).parents[1]), cwd=REPO, env=ENV,
                                 capture_output=True, text=True, timeout=240)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
    ours = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(ours) == 1, refused.stderr[-3000:]  # once, not once per process
    assert ours[0] == f"error: --output_dir {output} is in use by another run (pid {holder.pid} on " \
        f"{socket.gethostname()} since " + ours[0].split(" since ")[1]
    assert not re.search(r"\[rank\d\]: Traceback", refused.stderr)  # none from our processes
    assert sorted(p.name for p in output.iterdir()) == [".lock"]  # nothing written


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


def _corrupt_last_row_group(path: Path) -> bytes:
    """Overwrite the middle of the last row group's image data (rank 1's second shard) with garbage, as a bad
    disk sector would; returns the file's original bytes."""
    original = path.read_bytes()
    chunk = pq.ParquetFile(path).metadata.row_group(3).column(2)
    start = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size // 3
    path.write_bytes(original[:start] + bytes(range(256)) * 8 + original[start + 2048:])
    return original


@pytest.mark.timeout(300)
def test_a_failed_rank_is_named_and_the_same_command_finishes_the_run(source, tmp_path, tiny_models, clean):
    """Rank 1 breaks on a corrupt row group (torchrun then stops rank 0 too); what both recorded stays, and the
    same command, once the file is whole again, finishes the run."""
    copy = tmp_path / "rows.parquet"
    copy.write_bytes(source.read_bytes())
    output = tmp_path / "out"
    command = _command(copy, output, Path(tiny_models.captioner).parents[1])
    original = _corrupt_last_row_group(copy)
    failed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    record = output / "progress" / "rank-00001.json"
    kept = json.loads(record.read_text()) if record.exists() else {"rows": 0, "chunks": 0, "done": False}
    assert not kept["done"]
    assert (f"rank 1 failed; the {kept['rows']} rows ({kept['chunks']} chunks) it recorded are kept: "
            "run the same command again") in failed.stderr
    copy.write_bytes(original)
    _finish(command)
    _assert_same_output(output, clean)


def test_a_process_with_an_empty_share_finishes_cleanly(source, tmp_path, tiny_models):
    output = tmp_path / "out"
    _finish(_command(source, output, Path(tiny_models.captioner).parents[1], "--max_samples", "1"))
    assert [json.loads((output / "progress" / f"rank-{r:05d}.json").read_text())["rows"] for r in (0, 1)] == [1, 0]
    assert pq.read_table(sorted((output / "data").glob("*.parquet"))).num_rows == 1


def test_a_changed_command_after_an_attempt_that_wrote_no_rows_starts_over(tmp_path):
    """A first attempt that stopped before its first chunk (a mistyped model id, say) does not lock the folder
    to its settings; once a chunk exists, a change is refused."""
    from builder.config import ConfigError, parse_config
    from builder.resume import start_or_resume

    output = tmp_path / "out"
    start_or_resume(output, parse_config(["--output_dir", str(output), "--top_p", "0.5"]), 2, overwrite=False)
    (output / "progress" / "rank-00001.json").write_text(json.dumps({"chunks": 0, "rows": 0, "done": True,
                                                                     "stats": {}}))
    start_or_resume(output, parse_config(["--output_dir", str(output), "--top_p", "0.6"]), 2, overwrite=False)
    assert json.loads((output / "progress" / "run.json").read_text())["top_p"] == 0.6
    assert sorted(p.name for p in (output / "progress").iterdir()) == ["run.json"]

    (output / "data").mkdir()
    pq.write_table(pa.table({"x": [1]}), output / "data" / "train-00000-00000.parquet")
    with pytest.raises(ConfigError, match="top_p 0.6 -> 0.7"):
        start_or_resume(output, parse_config(["--output_dir", str(output), "--top_p", "0.7"]), 2, overwrite=False)

"""Workers that come and go: killed at random moments, a changed number of them, a task taken over without a
relaunch, two workers on one task, output on S3 — and every time exactly a clean one-worker run's output."""

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
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

# One CPU thread per worker everywhere: torchrun sets this for the workers it starts, and a matrix product's last
# bits depend on how many threads split it, so a clean run on two threads would differ in the 8th digit.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
REPO = Path(__file__).resolve().parents[1]
ROWS = 120
ROWS_PER_TASK = 40  # 3 tasks, cut inside row groups
ROWS_PER_CHUNK = 16  # a task is 3 chunks: 16, 16, 8
LEASE = 3  # seconds: dead workers' tasks are taken over quickly


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24 + i % 7, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


LAYOUTS = {"row groups": 50, "one row group": ROWS}  # row group size of the one source file: 50 makes tasks of 40 + 10


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """ROWS embedded images (no network), a few corrupt, in one file per layout."""
    folder = tmp_path_factory.mktemp("source")
    images = [b"not an image" if i % 23 == 5 else _jpeg(i) for i in range(ROWS)]
    table = pa.table({"url": [f"https://example.invalid/{i}.jpg" for i in range(ROWS)],
                      "caption": [f"alt text {i}" for i in range(ROWS)], "image": pa.array(images, pa.binary())})
    paths = {}
    for layout, group in LAYOUTS.items():
        paths[layout] = folder / f"{layout.replace(' ', '-')}.parquet"
        pq.write_table(table, paths[layout], row_group_size=group)
    return paths


# The recipe's cost per row, or a quarter of it (8 candidates, 8-token repairs: the tiny T5 never ends a repair
# early), which halves a worker's run. The test that kills three times needs workers slow enough that every kill
# lands before the run ends; the others test tasks, not the recipe, and take the fast pace.
PACE = {"one row group": (), "row groups": ("--num_candidates", "8", "--repair_max_new_tokens", "8")}


def _flags(sources: dict[str, Path], layout: str, output: str, cache_dir: Path, *extra: str) -> list[str]:
    """A worker's command line on the layout's source, at its pace."""
    return ["build.py", "--preset", "tiny", "--cache_dir", str(cache_dir), "--source", str(sources[layout]),
            "--output_dir", output, "--batch_size", "8", "--rows_per_chunk", str(ROWS_PER_CHUNK),
            "--rows_per_task", str(ROWS_PER_TASK), "--lease_seconds", str(LEASE), *PACE[layout], *extra]


def worker(*flags: str) -> list[str]:
    """One worker, started by hand."""
    return [sys.executable, *flags]


def accelerate(*flags: str) -> list[str]:
    """Two workers, started by `accelerate launch`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml", *flags]


def start(command: list[str], env: dict = ENV) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    """`sig` to the process and every process under it (torchrun starts its workers in sessions of their own),
    as a scheduler's kill of the job would; returns its stderr."""
    try:
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return proc.communicate(timeout=60)[1]


def run(command: list[str], env: dict = ENV) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def task_rows(record: Path) -> int:
    """Rows a task's progress record says are written; once the task is done its record moves into its done
    marker."""
    for path in (record, record.parent.parent / "done" / record.name):
        try:
            return json.loads(path.read_text())["rows"]
        except (OSError, ValueError):  # not there, or being replaced right now
            continue
    return 0


def half_done_tasks(output: Path) -> dict[int, int]:
    """Tasks with rows recorded and not done, with their rows."""
    done = {path.name for path in (output / "tasks" / "done").glob("*.json")}
    rows = {int(path.stem): task_rows(path) for path in (output / "tasks" / "progress").glob("*.json")
            if path.name not in done}
    return {task: count for task, count in rows.items() if count}


def recorded_rows(output: Path) -> int:
    """Rows the tasks' records say are written."""
    names = {path.name for folder in ("progress", "done") for path in (output / "tasks" / folder).glob("*.json")}
    return sum(task_rows(output / "tasks" / "progress" / name) for name in names)


def wait_for(predicate, *procs: subprocess.Popen, timeout: float = 180.0) -> bool:
    """Poll until `predicate()`, or until every process ended; True if the predicate held first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
        if predicate():
            return True
        time.sleep(0.01)
    return False


def files_and_rows(output: Path) -> dict[str, list[dict]]:
    """Every chunk file by name, with its rows in order."""
    return {path.name: pq.read_table(path).to_pylist() for path in sorted((output / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def clean_runs(sources, tmp_path_factory, tiny_models):
    """An uninterrupted one-worker run's files and rows, per source layout, made once when first asked for."""
    made: dict[str, dict[str, list[dict]]] = {}

    def clean(layout: str) -> dict[str, list[dict]]:
        if layout not in made:
            output = tmp_path_factory.mktemp("clean")
            run(worker(*_flags(sources, layout, str(output), Path(tiny_models.captioner).parents[1])))
            made[layout] = files_and_rows(output)
            assert sum(map(len, made[layout].values())) == ROWS
        return made[layout]

    return clean


def assert_same_output(got: dict[str, list[dict]], clean: dict[str, list[dict]], stats: dict) -> None:
    """The same files with the same rows (every column: there are no timings in rows), none twice or missing;
    and statistics that count each row once, however many attempts wrote it."""
    assert got.keys() == clean.keys()
    for name, rows in got.items():
        assert rows == clean[name], name
    urls = [row["URL"] for rows in got.values() for row in rows]
    assert len(urls) == len(set(urls)) == ROWS
    statuses = [row["status"] for rows in clean.values() for row in rows]
    assert stats["statuses"] == {status: statuses.count(status) for status in set(statuses)}


def finished(output: Path) -> dict:
    """What finishing left: the merged stats; the card and the finished marker must be there."""
    assert (output / "README.md").is_file() and (output / "tasks" / "finished.json").is_file()
    assert not [path for path in output.rglob(".*") if path.is_file()], "temp files left behind"
    return json.loads((output / "stats.json").read_text())


@pytest.mark.timeout(900)
def test_three_workers_killed_then_two_then_one_equal_one_clean_worker(sources, tmp_path, tiny_models, clean_runs):
    """Three workers, two SIGKILLed at random moments and the third stopped; the run continued by two workers
    (`accelerate launch`), SIGKILLed together; finished by one. Tasks are cut inside the source's one row group."""
    layout, cache_dir, output = "one row group", Path(tiny_models.captioner).parents[1], tmp_path / "out"
    flags = _flags(sources, layout, str(output), cache_dir)
    rng = random.Random(0)
    three = [start(worker(*flags)) for _ in range(3)]
    for victim, threshold in ((three[0], ROWS_PER_CHUNK), (three[1], 3 * ROWS_PER_CHUNK)):
        assert wait_for(lambda: recorded_rows(output) >= threshold, *three), "the workers stopped early"
        time.sleep(rng.uniform(0, 0.5))
        kill(victim)
    sent = time.monotonic()
    stopped = kill(three[2], signal.SIGTERM)
    assert time.monotonic() - sent < 10, "a SIGTERM must stop a worker within seconds"
    assert three[2].returncode == 128 + signal.SIGTERM and "run the same command again to go on" in stopped
    assert recorded_rows(output) < ROWS

    two = start(accelerate(*flags))
    before = recorded_rows(output)
    assert wait_for(lambda: recorded_rows(output) >= before + 2 * ROWS_PER_CHUNK and half_done_tasks(output),
                    two), kill(two)[-3000:]
    time.sleep(rng.uniform(0, 0.5))
    kill(two)
    assert recorded_rows(output) < ROWS, "the kills landed after the run had finished"
    # Usually a task is left half done; the sleep may let the workers finish it and stop before the next one
    # records a chunk, and then there is nothing to resume.
    left_half_done = half_done_tasks(output)

    last = run(worker(*flags))
    for task, rows in left_half_done.items():  # a killed worker's task went on from its progress record
        assert f"task {task}: resuming after {rows} rows" in last.stderr
    assert_same_output(files_and_rows(output), clean_runs(layout), finished(output))


@pytest.mark.timeout(600)
def test_a_dead_workers_task_is_taken_over_without_a_relaunch_and_finishing_runs_once(sources, tmp_path, tiny_models,
                                                                                     clean_runs):
    layout, cache_dir, output = "row groups", Path(tiny_models.captioner).parents[1], tmp_path / "out"
    flags = _flags(sources, layout, str(output), cache_dir)
    victim, survivor = start(worker(*flags)), start(worker(*flags))

    def victim_holds_a_started_task() -> bool:
        """The victim (worker ids carry their pid) holds a task with a chunk recorded and more to do."""
        for lease in (output / "tasks" / "leases").glob("*.json"):
            try:
                holder = json.loads(lease.read_text())["worker"]
            except (OSError, ValueError):  # being replaced right now
                continue
            rows = task_rows(output / "tasks" / "progress" / lease.name)
            if f"-{victim.pid}-" in holder and rows and not (output / "tasks" / "done" / lease.name).exists():
                return True
        return False

    assert wait_for(victim_holds_a_started_task, victim, survivor)
    kill(victim)
    assert recorded_rows(output) < ROWS
    stdout, stderr = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, stderr[-3000:]
    assert "resuming after" in stderr  # it took the dead worker's task up where its progress record said
    assert stderr.count(f"done: {output}") == 1
    assert_same_output(files_and_rows(output), clean_runs(layout), finished(output))

    late = run(worker(*flags))  # nothing left to take: exits 0 at once, loads no model, finishes nothing again
    assert "every task of" in late.stderr and "is finished already" in late.stderr
    assert "loading" not in late.stderr and f"done: {output}" not in late.stderr


@pytest.mark.timeout(600)
def test_two_workers_on_one_task_still_leave_an_exact_output(sources, tmp_path, tiny_models, clean_runs):
    """A worker that stalls past its lease (SIGSTOP) finds, when it comes back (SIGCONT), its task taken over by
    another; both finish it, writing the same chunks under the same names."""
    layout, cache_dir, output = "row groups", Path(tiny_models.captioner).parents[1], tmp_path / "out"
    flags = _flags(sources, layout, str(output), cache_dir)
    first = start(worker(*flags))
    started = []

    def first_holds_a_half_done_task() -> bool:
        """A task with a chunk recorded and at least a chunk left to do (so that both workers write some)."""
        if not (output / "tasks" / "plan.json").exists():
            return False
        plan = json.loads((output / "tasks" / "plan.json").read_text())
        for progress in (output / "tasks" / "progress").glob("*.json"):
            rows = task_rows(progress)
            pieces = plan[int(progress.stem)]["pieces"]
            if 0 < rows <= sum(piece["stop"] - piece["start"] for piece in pieces) - ROWS_PER_CHUNK:
                started.append(int(progress.stem))
                return True
        return False

    assert wait_for(first_holds_a_half_done_task, first), kill(first)[-3000:]
    first_process = psutil.Process(first.pid)
    first_process.suspend()
    time.sleep(LEASE + 1)  # its lease expires
    second = start(worker(*flags))  # takes up the started task first
    progress = output / "tasks" / "progress" / f"{started[0]:06d}.json"
    before = task_rows(progress)
    assert wait_for(lambda: task_rows(progress) > before, second), kill(second)[-3000:]
    first_process.resume()
    outputs = [proc.communicate(timeout=400) for proc in (first, second)]
    assert [proc.returncode for proc in (first, second)] == [0, 0], [err[-2000:] for _, err in outputs]
    task = started[0]
    assert f"task {task}: resuming after" in outputs[1][1]  # the second worker really ran the first one's task
    assert f"task {task} done" in outputs[0][1] and f"task {task} done" in outputs[1][1]
    assert "was taken over by" in outputs[0][1]  # the first one's heartbeat saw it, and it went on
    assert_same_output(files_and_rows(output), clean_runs(layout), finished(output))


@pytest.mark.timeout(600)
def test_an_output_on_s3_equals_a_local_one_and_reads_back(sources, tmp_path, tiny_models, clean_runs, s3_bucket):
    """Two workers writing to a real S3-compatible server (moto, loopback), SIGKILLed at a random moment;
    one worker finishes; the output loads back with pyarrow and `load_dataset(..., storage_options=...)`."""
    import datasets
    import fsspec

    layout, cache_dir, url = "row groups", Path(tiny_models.captioner).parents[1], f"{s3_bucket.url}/run"
    flags = _flags(sources, layout, url, cache_dir)
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)

    def task_rows_on_s3(name: str) -> int:
        """Like `task_rows`: a finishing task's progress record is deleted after its done marker is written."""
        for folder in ("progress", "done"):
            try:
                return json.loads(fs.cat_file(f"{url}/tasks/{folder}/{name}"))["rows"]
            except FileNotFoundError:
                continue
        return 0

    def recorded() -> int:
        fs.invalidate_cache()
        names = {path.rsplit("/", 1)[-1] for folder in ("progress", "done")
                 for path in fs.glob(f"{url}/tasks/{folder}/*.json")}
        return sum(task_rows_on_s3(name) for name in names)

    two = start(accelerate(*flags), env={**ENV, **s3_bucket.env})
    assert wait_for(lambda: recorded() >= 2 * ROWS_PER_CHUNK, two), kill(two)[-3000:]
    time.sleep(random.Random(1).uniform(0, 0.5))
    kill(two)
    assert recorded() < ROWS
    run(worker(*flags), env={**ENV, **s3_bucket.env})

    local = tmp_path / "copy"
    fs.get(f"{url}/", str(local), recursive=True)
    assert_same_output(files_and_rows(local), clean_runs(layout), finished(local))
    loaded = datasets.load_dataset("parquet", data_files=f"{url}/data/*.parquet", split="train",
                                   storage_options=s3_bucket.storage_options)
    assert sorted(loaded["URL"]) == sorted(f"https://example.invalid/{i}.jpg" for i in range(ROWS))
    table = pq.read_table(f"{url.removeprefix('s3://')}/data", filesystem=fs)
    assert table.num_rows == ROWS


@pytest.mark.timeout(300)
def test_a_resumed_task_seeks_to_its_next_row_in_a_million_row_source(tmp_path, tiny_models):
    """1,000,000 cheap rows (unsupported URLs: no network, no model runs), tasks of 20,000 rows (50 of them, taken
    anywhere among the first 64 free: the seek goes deep into the file): a worker killed at ~90% of its task is
    restarted; it resumes that task first, at the recorded row, and its next chunk holds
    exactly the rows after it. (How long the restart takes, at 10% and 90%, is bench/scale.py's to measure.)"""
    source = tmp_path / "million.parquet"
    pq.write_table(pa.table({"URL": [f"bad://{i}" for i in range(1_000_000)]}), source, row_group_size=10_000)
    output = tmp_path / "out"
    flags = ["build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
             "--source", str(source), "--output_dir", str(output), "--rows_per_task", "20000",
             "--rows_per_chunk", "2000", "--batch_size", "256", "--lease_seconds", "1"]
    first = start(worker(*flags))
    assert wait_for(lambda: recorded_rows(output) >= 18_000, first, timeout=240), kill(first)[-3000:]
    kill(first)
    [progress] = (output / "tasks" / "progress").glob("*.json")
    done = task_rows(progress)
    task = int(progress.stem)
    time.sleep(1.5)  # its lease expires
    second = start(worker(*flags))
    assert wait_for(lambda: task_rows(progress) > done, second, timeout=120), kill(second)[-3000:]
    stderr = kill(second)
    assert f"task {task}: resuming after {done} rows" in stderr
    chunks = sorted((output / "data").glob(f"train-{task:06d}-*.parquet"))
    urls = [url for path in chunks for url in pq.read_table(path, columns=["URL"])["URL"].to_pylist()]
    first_row = task * 20_000
    assert urls == [f"bad://{i}" for i in range(first_row, first_row + len(urls))]
    assert len(urls) > done

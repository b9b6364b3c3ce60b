"""What the task layout costs and buys: coordination per task, restart after a kill, 1 vs 2 workers.

    python bench/scale.py            # about 15 minutes on 2 cores
    python bench/scale.py --quick    # everything scaled down, about 2 minutes: checks the script itself

1. Coordination per task: the real `builder.claims.Board` and `output.store.OutputStore` operations one task of
   the default size costs (a claim with its settle wait, the progress record read at its start and written
   after each chunk, a heartbeat per third of --lease_seconds, the done marker), timed on a local folder and on
   a loopback S3 server; set against the wall time of such a task at this machine's tiny-model rate.
2. Restart to the first new chunk after a SIGKILL at ~10% and ~90% of a one-task source of cheap rows (URLs
   with an unsupported scheme: an error at once, no network, no model), against the old resume's
   `datasets` streaming `.skip(n)` to the first row, for the same n.
3. Throughput of 1 and 2 workers (`build.py` processes started side by side) on embedded-image rows.

Workers run `build.py --preset tiny` in their own process groups; times are taken from the output location
(progress records and done markers), never from exit codes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.chunk_overhead import write_source as write_image_source  # noqa: E402
from builder.claims import Board  # noqa: E402
from builder.config import RunConfig  # noqa: E402
from builder.resume import TaskProgress, save_progress  # noqa: E402
from output.layout import DONE_GLOB, done_name, lease_name, progress_name  # noqa: E402
from output.store import OutputStore  # noqa: E402
from tests.s3_server import create_bucket, running_s3_server  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
DEFAULTS = {field.name: field.default for field in fields(RunConfig)}  # build.py's: what a task costs by default
DEFAULT_ROWS_PER_TASK, DEFAULT_ROWS_PER_CHUNK = DEFAULTS["rows_per_task"], DEFAULTS["rows_per_chunk"]
DEFAULT_LEASE_SECONDS = DEFAULTS["lease_seconds"]
RESTART_LEASE_SECONDS = 2.0  # short, so a killed worker's task is free again soon
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Scale:
    """How big each measurement is; `--quick` shrinks every one."""

    repeats: int  # timings per coordination operation (medians)
    tasks_done: int  # done markers present for the "claim late in a run" row
    restart_rows: int  # rows of the one-task cheap source
    restart_rows_per_chunk: int  # also its row group size
    restarts: int  # restarts timed at each position (medians)
    throughput_tasks: int
    throughput_rows_per_task: int


FULL = Scale(repeats=15, tasks_done=1_000, restart_rows=1_000_000, restart_rows_per_chunk=10_000, restarts=3,
             throughput_tasks=4, throughput_rows_per_task=64)
QUICK = Scale(repeats=3, tasks_done=100, restart_rows=100_000, restart_rows_per_chunk=5_000, restarts=2,
              throughput_tasks=2, throughput_rows_per_task=16)


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# ------------------------------------------------------------------------------------------ workers


class Workers:
    """`build.py --preset tiny` processes on one output, each in its own process group, logs under `logs`."""

    def __init__(self, source: Path, output: str, logs: Path, cache_dir: str | None, *flags: str):
        self.command = [sys.executable, "build.py", "--preset", "tiny", "--source", str(source),
                        "--output_dir", output, *(["--cache_dir", cache_dir] if cache_dir else []), *flags]
        self.logs = logs
        logs.mkdir(exist_ok=True)
        self.running: list[subprocess.Popen] = []
        self.started = 0

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            log = open(self.logs / f"worker-{self.started}.log", "w")
            self.running.append(subprocess.Popen(self.command, cwd=REPO, env={**os.environ, **OFFLINE}, stdout=log,
                                                 stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
            self.started += 1

    def wait_until(self, predicate, timeout: float = 1800.0) -> float:
        """Poll `predicate` until it holds; returns the time it did (perf_counter). Fails with the last worker's
        log if every worker exited first or `timeout` passed."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if predicate():
                return time.perf_counter()
            if all(proc.poll() is not None for proc in self.running):
                break
            time.sleep(POLL_SECONDS)
        if predicate():
            return time.perf_counter()
        tail = (self.logs / f"worker-{self.started - 1}.log").read_text()[-3000:]
        sys.exit(f"{' '.join(self.command)}: workers stopped (or timed out) before the awaited state:\n{tail}")

    def kill(self) -> None:
        """SIGKILL every worker's whole process group, as a lost node or an OOM kill would."""
        for proc in self.running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.running = []


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def recorded_rows(output: Path, task: int = 0) -> int:
    record = read_json(output / progress_name(task))
    return record["rows"] if record else 0


def done_count(output: Path) -> int:
    return len(list(output.glob(DONE_GLOB)))


# ------------------------------------------------------------------------------- 3. 1 vs 2 workers


@dataclass
class ThroughputRun:
    workers: int
    rows: int
    seconds: float  # first start to the last done marker
    cpu_seconds: float  # user + sys of every worker process, start-up included
    active_rows_per_second: float  # rows over the tasks' own seconds (`active_seconds`): no start-up, no waits
    load: str


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # of the children waited for so far
    return usage.ru_utime + usage.ru_stime


def run_workers(source: Path, work: Path, cache_dir: str | None, scale: Scale, workers: int) -> ThroughputRun:
    output = work / f"workers-{workers}"
    team = Workers(source, str(output), work / f"logs-workers-{workers}", cache_dir,
                   "--rows_per_task", str(scale.throughput_rows_per_task))
    before, cpu = load(), children_cpu_seconds()
    start = time.perf_counter()
    team.start(workers)
    end = team.wait_until(lambda: done_count(output) == scale.throughput_tasks)
    team.kill()  # finishing the run (card, gallery) is not part of the throughput
    cpu = children_cpu_seconds() - cpu
    records = [read_json(path) for path in output.glob(DONE_GLOB)]
    rows = sum(record["rows"] for record in records)
    active = sum(record["stats"]["active_seconds"] for record in records)
    note(f"{workers} worker(s): {rows} rows in {end - start:.1f} s")
    return ThroughputRun(workers, rows, end - start, cpu, rows / active, before)


def print_throughput(runs: list[ThroughputRun], scale: Scale) -> None:
    base = runs[0].rows / runs[0].seconds
    print(f"\n### 1 vs 2 workers: {scale.throughput_tasks} tasks of {scale.throughput_rows_per_task} embedded-image "
          f"rows, tiny models, default --batch_size, {os.cpu_count()} cores\n")
    print("| workers | rows | s (start to every task done) | rows/s | vs 1 worker | CPU s | rows/CPU s | load before |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        rate = run.rows / run.seconds
        print(f"| {run.workers} | {run.rows} | {run.seconds:.1f} | {rate:.2f} | {rate / base:.2f}x | "
              f"{run.cpu_seconds:.0f} | {run.rows / run.cpu_seconds:.2f} | {run.load} |")
    print("\nCPU s: user + sys of the worker processes, start-up included (the number least disturbed by other load "
          "on the machine); load: the 1-minute load average just before the run.")


# ---------------------------------------------------------------------------- 1. coordination per task


@dataclass
class Costs:
    """Median seconds of each operation on one store."""

    claim: float
    claim_late: float  # with `Scale.tasks_done` tasks done
    progress_read: float
    progress_write: float
    renew: float
    mark_done: float


def median_seconds(operation, repeats: int, after=None) -> float:
    """Median wall time of `operation()`; `after()` (untimed) restores the state between calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        times.append(time.perf_counter() - start)
        if after:
            after()
    return statistics.median(times)


def timed_claim(board: Board, numbers: list[int], repeats: int) -> float:
    """A worker's step to its next task (`builder.run.Worker.work`): list the done markers, then claim; the lease
    is released untimed after each, so every repeat sees the same board."""
    claimed = []
    return median_seconds(lambda: claimed.append(board.claim(numbers, board.done())), repeats,
                          after=lambda: board.release(lease_name(claimed[-1])))


def coordination_costs(store: OutputStore, scale: Scale, record: dict) -> Costs:
    board = Board(store, "bench-worker", DEFAULT_LEASE_SECONDS)
    numbers = list(range(scale.tasks_done + 64))  # a run's tasks; the first ones get done below
    claim = timed_claim(board, numbers, scale.repeats)
    task = numbers[-1]  # the task the other operations work on
    board.write_lease(lease_name(task))
    progress = TaskProgress(**{key: record[key] for key in ("chunks", "rows", "stats")})
    progress_write = median_seconds(lambda: save_progress(store, task, progress), scale.repeats)
    progress_read = median_seconds(lambda: store.read_json(progress_name(task)), scale.repeats)
    renew = median_seconds(lambda: board.renew(lease_name(task)), scale.repeats)
    mark_done = median_seconds(lambda: board.mark_done(task, record), scale.repeats,
                               after=lambda: board.write_lease(lease_name(task)))
    for name in (done_name(task), progress_name(task), lease_name(task)):
        store.delete(name)
    finished = json.dumps(record).encode()  # a finished task leaves its progress record and its done marker
    store.fs.pipe({store.path(name(number)): finished for number in range(scale.tasks_done)
                   for name in (progress_name, done_name)})
    claim_late = timed_claim(board, numbers, scale.repeats)
    return Costs(claim, claim_late, progress_read, progress_write, renew, mark_done)


@contextmanager
def s3_store():
    """A fresh bucket on a loopback S3 server (the test suite's), and a store in it."""
    with running_s3_server() as endpoint:
        bucket = create_bucket(endpoint, {})  # no subprocess reaches this bucket: no environment to hand on
        yield OutputStore(f"{bucket.url}/run", bucket.storage_options)


def print_coordination(costs: dict[str, Costs], rows_per_second: float, scale: Scale) -> None:
    task_seconds = DEFAULT_ROWS_PER_TASK / rows_per_second
    heartbeats = math.floor(task_seconds / (DEFAULT_LEASE_SECONDS / 3))
    chunks = -(-DEFAULT_ROWS_PER_TASK // DEFAULT_ROWS_PER_CHUNK)
    per_task = [  # (operation, times per task, its cost)
        ("claim (done listing, leases, lease write, settle wait, read back)", 1, lambda c: c.claim),
        ("progress record read (task start)", 1, lambda c: c.progress_read),
        ("progress record write (per chunk)", chunks, lambda c: c.progress_write),
        (f"heartbeat (every {DEFAULT_LEASE_SECONDS / 3:.0f} s)", heartbeats, lambda c: c.renew),
        ("done marker + lease release", 1, lambda c: c.mark_done),
    ]
    names = list(costs)
    print(f"\n### Coordination per task: {DEFAULT_ROWS_PER_TASK} rows, {chunks} chunks, --lease_seconds "
          f"{DEFAULT_LEASE_SECONDS:.0f}; medians of {scale.repeats}\n")
    print("| operation | per task | " + " | ".join(f"{name} ms | {name} ms/task" for name in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    totals = dict.fromkeys(names, 0.0)
    for label, count, cost in per_task:
        cells = []
        for name in names:
            each = cost(costs[name])
            totals[name] += count * each
            cells.append(f"{each * 1e3:.1f} | {count * each * 1e3:.1f}")
        print(f"| {label} | {count} | " + " | ".join(cells) + " |")
    print("| **total per task** | | " + " | ".join(f" | **{totals[name] * 1e3:.0f}**" for name in names) + " |")
    print(f"| claim with {scale.tasks_done} tasks done | | "
          + " | ".join(f"{costs[name].claim_late * 1e3:.1f} | " for name in names) + " |")
    print(f"\nTask wall time: {DEFAULT_ROWS_PER_TASK} rows at {rows_per_second:.1f} rows/s (tiny models, this "
          f"machine, measured in the 1-worker run below) = {task_seconds:.0f} s.")
    for name in names:
        print(f"Coordination share, {name}: {totals[name]:.3f} s / {task_seconds:.0f} s = "
              f"{100 * totals[name] / task_seconds:.3f}% (goal < 1%)")


# ------------------------------------------------------------------------ 2. restart to first chunk


@dataclass
class Restart:
    position: str
    rows_done: int
    seconds: float  # worker start to its first new chunk's progress record
    skip_seconds: float | None = None  # the old resume: streaming `.skip(rows_done)` to the first row


def write_cheap_source(path: Path, rows: int, row_group: int) -> None:
    """URLs with an unsupported scheme: every row is an invalid_url at once, no network, no model runs."""
    pq.write_table(pa.table({"url": [f"bad://{i}" for i in range(rows)], "caption": [f"alt {i}" for i in range(rows)]}),
                   path, row_group_size=row_group)


def wait_out_lease(output: Path) -> None:
    lease = read_json(output / lease_name(0))
    if lease:
        time.sleep(max(0.0, lease["expires"] - time.time()) + 0.1)


def first_chunk_seconds(worker: Workers, output: Path) -> float:
    """Start `worker` on `output`; seconds until its progress record holds more rows than before."""
    before = recorded_rows(output)
    start = time.perf_counter()
    worker.start()
    return worker.wait_until(lambda: recorded_rows(output) > before) - start


def restarts(work: Path, cache_dir: str | None, scale: Scale) -> tuple[Path, list[Restart]]:
    """Fresh outputs to their first chunk; then the last one's worker runs on, is killed at >= 10% and
    restarted (each restart timed, killed after its first new chunk, `Scale.restarts` times), runs on to >= 90%,
    and the same again: each row is processed about once. Medians, so one slow start on a busy machine does not
    decide a row."""
    source = work / "cheap.parquet"
    rows, chunk = scale.restart_rows, scale.restart_rows_per_chunk
    write_cheap_source(source, rows, chunk)
    fresh = []
    for attempt in range(scale.restarts):
        output = work / f"restart-{attempt}"
        worker = Workers(source, str(output), work / f"logs-restart-{attempt}", cache_dir, "--rows_per_task",
                         str(rows), "--rows_per_chunk", str(chunk), "--lease_seconds", str(RESTART_LEASE_SECONDS))
        fresh.append(first_chunk_seconds(worker, output))
        worker.kill()
    measured = [Restart("0% (fresh output)", 0, statistics.median(fresh))]
    worker.start()  # the last output runs on
    for share in (0.1, 0.9):
        worker.wait_until(lambda: recorded_rows(output) >= share * rows)
        seconds, first = [], None
        for _ in range(scale.restarts):
            worker.kill()
            first = recorded_rows(output) if first is None else first
            wait_out_lease(output)
            seconds.append(first_chunk_seconds(worker, output))
        measured.append(Restart(f"{100 * first / rows:.0f}%", first, statistics.median(seconds)))
        note(f"restarts after {first} rows: first new chunk in {', '.join(f'{s:.1f}' for s in seconds)} s")
    worker.kill()
    return source, measured


def old_skip_seconds(source: Path, rows: int, repeats: int) -> float:
    """The old resume (before tasks): the whole source as one `datasets` stream through the source's own maps
    (the UTF-8 repair and the row key, as `open_stream` chained them then), `.skip(rows)`, to its first row
    (median; the first call of the process, which pays one-time set-up, is made untimed)."""
    from datasets import load_dataset

    from builder.source import row_key, valid_utf8

    def first_row() -> None:
        stream = load_dataset("parquet", data_files=str(source), split="train", streaming=True)
        stream = stream.with_format("arrow").map(valid_utf8, batched=True, features=stream.features)
        stream = stream.with_format(None).map(
            lambda batch: {"_row_key": [row_key(url, None) for url in batch["url"]]}, batched=True)
        next(iter(stream.skip(rows)))

    first_row()
    return median_seconds(first_row, repeats)


def print_restarts(measured: list[Restart], scale: Scale) -> None:
    print(f"\n### Restart to the first new chunk: one task of {scale.restart_rows} cheap rows, chunks and row groups "
          f"of {scale.restart_rows_per_chunk}, SIGKILL, lease ({RESTART_LEASE_SECONDS:.0f} s) waited out; medians of "
          f"{scale.restarts} restarts, each a chunk further\n")
    print("| position | rows done | restart to first new chunk s | vs fresh output s | old skip to first row s | "
          "restart / skip |")
    print("|---|---|---|---|---|---|")
    fresh = measured[0].seconds
    for row in measured:
        print(f"| {row.position} | {row.rows_done} | {row.seconds:.1f} | {row.seconds - fresh:+.1f} | "
              f"{row.skip_seconds:.3f} | {row.seconds / row.skip_seconds:.0f} |")
    print(f"\nRestart: a new `build.py` process (interpreter, imports, tiny models loaded), the claim, the seek, and "
          f"one whole chunk of {scale.restart_rows_per_chunk} rows through the pipeline to its progress record. "
          "Old skip: in this process (imports done), the old resume's stream (`load_dataset(parquet, streaming=True)`, "
          "its UTF-8 and row-key maps) `.skip(n)` to the first row.")


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="everything scaled down (~2 minutes): checks the script")
    parser.add_argument("--cache_dir", help="build.py's --cache_dir for the tiny models (default: build.py's)")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    os.environ.update(OFFLINE)  # before `datasets` is imported (the old-skip baseline)

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        work = Path(work)
        note(f"work dir {work}; load {load()}")
        images = work / "images.parquet"
        write_image_source(images, scale.throughput_tasks * scale.throughput_rows_per_task)
        runs = [run_workers(images, work, args.cache_dir, scale, workers) for workers in (1, 2)]
        finished = read_json(next((work / "workers-1").glob(DONE_GLOB)))

        note("coordination: local folder")
        local = work / "board"
        local.mkdir()
        costs = {"local": coordination_costs(OutputStore(str(local)), scale, finished)}
        note("coordination: loopback S3")
        with s3_store() as store:
            costs["S3"] = coordination_costs(store, scale, finished)
        print_coordination(costs, runs[0].active_rows_per_second, scale)

        note(f"restarts: {scale.restart_rows} cheap rows")
        cheap, measured = restarts(work, args.cache_dir, scale)
        for row in measured:
            row.skip_seconds = old_skip_seconds(cheap, row.rows_done, scale.repeats)
        print_restarts(measured, scale)
        print_throughput(runs, scale)


if __name__ == "__main__":
    main()

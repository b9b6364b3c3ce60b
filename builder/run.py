"""One worker: take unfinished tasks until none is left, run each through every stage into parquet chunks.

Any number of workers may run at once, started by any launcher (accelerate, torchrun, a Slurm array, by hand on
several machines); they agree on who does what through the output location alone (`builder.claims`). The
registered stages (`map_fns.registry.STAGES`) are chained as one `IterableDataset.map(batched=True)` each, so
nothing is materialised: rows flow from a task's stream through fetch, caption, rank, rerank and repair into the
writer one batch at a time. The models load once per worker, when it first takes a task.
With --retry_failed the source is an earlier output: its fetch_error rows go through the stages again and
every other row is carried over as it was.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import cached_property

from builder.claims import Board, Heartbeat, worker_id
from builder.cli import is_main_process
from builder.config import BuildConfig, config_text
from builder.finish import finish_once
from builder.hub import check_chunk_files, push_output
from builder.interrupt import RunInterrupted, StopRequest, stop_on_signals
from builder.prefetch import map_ahead
from builder.progress import WorkerProgress
from builder.resolve import check_hub_dataset, check_models
from builder.resume import TaskProgress, load_progress, save_progress, start_or_join
from builder.reuse import ResultReuse
from builder.source import IMAGE_COLUMN, ResolvedSource, check_hub_columns, open_stream, plan_tasks
from builder.stats import RunStats
from builder.tasks import Task
from map_fns.registry import STAGES, check_chain
from map_fns.stage import ROW_KEY, Stage, StageContext, as_declared
from map_fns.status import FETCH_ERROR, WITHHELD
from output.layout import CONFIG_FILE, lease_name
from output.schema import generated_columns, output_features
from output.store import OutputStore
from output.writer import ChunkWriter

logger = logging.getLogger(__name__)

TINY_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! --preset tiny: tiny RANDOM models. Captions are noise. For smoke runs and tests only.\n"
    + "!" * 78
)
IDLE_POLL_SECONDS = (1.0, 10.0)  # bounds of how often an idle worker looks again (a tenth of --lease_seconds)


def this_process_device():
    """The GPU `accelerate launch` / torchrun assigned this process (LOCAL_RANK), else the CPU. No process
    group is formed: workers never talk to each other, so none waits on a lost peer."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def start_logging(worker: str) -> None:
    logging.basicConfig(format=f"%(asctime)s {worker} %(name)s: %(message)s")
    for package in ("builder", "map_fns", "tools"):
        logging.getLogger(package).setLevel(logging.INFO)


def load_stages(cfg: BuildConfig, device, read_local_files: bool) -> list[tuple[Stage, Callable]]:
    """Every registered stage's batched function, its model loaded once, its output checked against its
    declaration. Image cells naming local files are read only with `read_local_files` (a local source: a Hub
    dataset must not make us read and publish the machine's files)."""
    context = StageContext(device, cfg.run.precision, cfg.run.model_batch_size, read_local_files)
    return [(stage, as_declared(stage, stage.load(getattr(cfg, stage.name), context))) for stage in STAGES]


def captioned(rows, source_columns, stages: list[tuple[Stage, Callable]], cfg: BuildConfig, stats: RunStats):
    """`rows` through every stage, one batched `datasets` map each.

    The fetch stage runs ahead in a background thread (`--prefetch_batches`) so downloads overlap the model
    stages; each stage adds its seconds to `stats`. Rows whose key (image hash, else URL) an earlier row of the
    same task had reuse that row's results instead of running the models again (within a task only, so a
    task's output never depends on which tasks its worker ran before).
    """
    check_chain([stage for stage, _ in stages], set(source_columns) | {ROW_KEY})
    size = cfg.run.batch_size
    counts_reuse = True  # the first reusing stage counts the rows it copies; later ones copy the same rows
    for stage, loaded in stages:
        fn = stats.timed(stage.name, loaded)
        if stage.reuse:
            fn = ResultReuse(on_reused=stats.add_reused if counts_reuse else lambda count: None).wrap(fn)
            counts_reuse = False
        if IMAGE_COLUMN in source_columns and "status" in stage.written:
            fn = withholding_images(fn)
        rows = map_ahead(rows, fn, cfg.run.prefetch_batches, size) if stage.run_ahead else \
            rows.map(fn, batched=True, batch_size=size)
    return rows


def withholding_images(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """`fn`, also emptying the source image cell of each row it gives a withheld status (blocked by a list,
    filtered): such an image is dropped as soon as it is judged, and never stored or shown."""
    def withholding(batch: dict[str, list]) -> dict[str, list]:
        out = fn(batch)
        if any(status in WITHHELD for status in out["status"]):
            out[IMAGE_COLUMN] = [None if status in WITHHELD else image
                                 for status, image in zip(out["status"], batch[IMAGE_COLUMN], strict=True)]
        return out

    return withholding


def split_retry(source_features, rows):
    """For --retry_failed: (rows carried over as they are, fetch_error rows stripped of their old results)."""
    carried = rows.filter(lambda row: row["status"] != FETCH_ERROR)
    generated = generated_columns()
    retried = rows.filter(lambda row: row["status"] == FETCH_ERROR).remove_columns(list(generated))
    features = {name: feature for name, feature in source_features.items() if name not in generated}
    return features, carried, retried


def skip_rows(parts: list, count: int) -> list:
    """`parts` (streams written one after another) without their first `count` rows in all.

    Every part but the last is counted by reading it, so they must be cheap (carried-over rows, never a
    stream that runs models); the last is skipped lazily.
    """
    kept = []
    for part in parts[:-1]:
        size = sum(1 for _ in part) if count else 0
        kept.append(part.skip(min(count, size)))
        count -= min(count, size)
    return kept + [parts[-1].skip(count) if count else parts[-1]]


def build(cfg: BuildConfig, source: ResolvedSource, plan: list[Task] | None) -> dict | None:
    """Join (or start) the run in --output_dir as one worker: work until every task is done, then finish the
    run if no other worker is finishing it; returns the merged stats if this worker finished it.

    `plan`: the source's tasks when they were cheap to make (a local source); else made here by the first
    worker. Raises `ConfigError` when the output holds a different run, `RunInterrupted` on SIGTERM/SIGINT.
    """
    worker = worker_id()
    start_logging(worker)
    if cfg.run.preset == "tiny":
        from builder.tiny_models import build_tiny_models

        build_tiny_models(cfg.run.cache_dir)
    check_models(cfg)
    if source.hub_id:
        check_hub_dataset(source.hub_id, cfg.source.source_split)
        check_hub_columns(source, cfg.source, cfg.fetch.row_filters())
    store = OutputStore(cfg.run.output_dir)
    tasks = start_or_join(store, cfg, plan, lambda: plan_tasks(source, cfg.source, cfg.run.rows_per_task))
    if plan is None:
        check_chunk_files(cfg, tasks)
    if cfg.run.preset == "tiny" and is_main_process():  # after the checks: a refused run prints its one line only
        logger.warning(TINY_WARNING)
    store.write_bytes(CONFIG_FILE, config_text(cfg).encode())  # so that `python -m builder.finish` can finish
    board = Board(store, worker, cfg.run.lease_seconds)
    with stop_on_signals(worker) as stop:
        Worker(cfg, source, store, board, tasks, stop).work()
    return finish_once(store, board, cfg, source, len(tasks))


class Worker:
    """Takes tasks from `board` until every one is done; an idle worker (the rest held by live workers) looks
    again now and then, and takes over a task whose lease expired."""

    def __init__(self, cfg: BuildConfig, source: ResolvedSource, store: OutputStore, board: Board,
                 tasks: list[Task], stop: StopRequest):
        self.cfg, self.source, self.store, self.board, self.tasks, self.stop = cfg, source, store, board, tasks, stop
        self.progress: WorkerProgress | None = None
        self.chunks_written = 0
        self.pushed: set[str] = set()  # files --push_every sent already: never hashed again

    @cached_property
    def stages(self) -> list[tuple[Stage, Callable]]:
        """Loaded when first needed: a worker that joins a finished run loads no model."""
        return load_stages(self.cfg, this_process_device(), self.source.read_local_files)

    def work(self) -> None:
        numbers = [task.index for task in self.tasks]
        idle = min(max(self.cfg.run.lease_seconds / 10, IDLE_POLL_SECONDS[0]), IDLE_POLL_SECONDS[1])
        try:
            while True:
                self._check_stop()
                done = self.board.done()
                if len(done) == len(numbers):
                    logger.info("every task of %s is done", self.store.location)
                    return
                task = self.board.claim(numbers, done)
                if task is None:
                    time.sleep(idle)  # the rest is held by live workers: take over any whose lease expires
                    continue
                self._start_progress(done)
                try:
                    with Heartbeat(self.board, lease_name(task)):
                        record = self._run_or_explain(self.tasks[task])
                except RunInterrupted:
                    self.board.release(lease_name(task))  # stopped, not lost: the task is free for anyone at once
                    raise
                self.board.mark_done(task, record)  # after the heartbeat stopped: it would write the lease again
        finally:
            if self.progress:
                self.progress.close()

    def _start_progress(self, done: set[int]) -> None:
        if self.progress is None:
            rows = [task.rows for task in self.tasks]
            total = None if None in rows else sum(rows)
            self.progress = WorkerProgress(self.board.worker, total, show_bar=is_main_process(),
                                           done=sum(rows[task] or 0 for task in done))

    def _check_stop(self) -> None:
        if self.stop:
            raise RunInterrupted(self.stop.signum, f"worker {self.board.worker} stopped; its chunks are in "
                                 f"{self.store.location}: run the same command again to go on")

    def _run_or_explain(self, task: Task) -> dict:
        """`run_task`, saying on failure what is kept: the traceback alone would not tell a user that nothing
        recorded is lost and what to run next."""
        try:
            return self.run_task(task)
        except RunInterrupted:
            raise
        except Exception:
            kept = load_progress(self.store, task.index)
            logger.exception("task %d failed; the %d rows (%d chunks) it recorded are kept: run the same command "
                             "again to go on", task.index, kept.rows, kept.chunks)
            raise

    def run_task(self, task: Task) -> dict:
        """The task's rows after those its progress record holds, through the stages into chunks; the record
        follows each chunk. Returns the task's final record."""
        cfg, store = self.cfg, self.store
        record = load_progress(store, task.index)
        if record.rows:
            logger.info("task %d: resuming after %d rows in %d chunks", task.index, record.rows, record.chunks)
        retrying = self.source.previous_output
        source_features, rows = open_stream(self.source, cfg.source, task, skip=0 if retrying else record.rows)
        parts = [rows]
        if retrying:
            source_features, carried, retried = split_retry(source_features, rows)
            parts = skip_rows([carried, retried], record.rows)
        stats = RunStats(record.stats)
        outputs = parts[:-1] + [captioned(parts[-1], source_features, self.stages, cfg, stats)]
        started, earlier_seconds = time.monotonic(), stats.active_seconds

        def chunk_written(chunk) -> None:
            stats.add({"status": chunk.column("status").to_pylist(), "error": chunk.column("error").to_pylist()})
            stats.active_seconds = earlier_seconds + time.monotonic() - started
            record.chunks, record.rows, record.stats = record.chunks + 1, record.rows + chunk.num_rows, stats.to_dict()
            save_progress(store, task.index, record)
            self.chunks_written += 1
            self._push_every()

        writer = ChunkWriter(store, task.index, output_features(source_features), cfg.run.rows_per_chunk,
                             first_chunk=record.chunks, on_chunk=chunk_written)
        for part in outputs:
            for batch in part.iter(batch_size=cfg.run.batch_size):
                writer.add(batch)
                self.progress.update(batch["status"])
                self._check_stop()
        writer.close()
        stats.active_seconds = earlier_seconds + time.monotonic() - started
        logger.info("task %d done: %d rows in %d chunks", task.index, record.rows, record.chunks)
        return {**vars(TaskProgress(record.chunks, record.rows, stats.to_dict())), "worker": self.board.worker}

    def _push_every(self) -> None:
        """--push_every: the launch's main process pushes every chunk in the output so far, every N chunks it
        wrote. A chunk not yet recorded may go too: whoever resumes its task rewrites it with the same rows. A
        failure only warns; the final push sends (and checks) everything."""
        publish = self.cfg.publish
        if not (publish.push_every and is_main_process() and self.chunks_written % publish.push_every == 0):
            return
        try:
            self.pushed.update(push_output(self.store.local_path(), publish.push_to_hub, private=publish.private,
                                           revision=publish.revision, final=False, skip=self.pushed))
        except Exception as err:  # a network hiccup must not stop hours of captioning
            logger.warning("pushing finished chunks failed, the run goes on (the final push retries): %s", err)

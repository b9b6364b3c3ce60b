"""Starting a run or joining one: the same settings, the same task list, and how far each task got.

The first worker records the run's result-affecting settings (`output.layout.RUN_FILE`) and its task list
(`PLAN_FILE`); every later worker, in this attempt or any later one, must share the settings and reuses the
list, so the number of workers may change between attempts. After each durable chunk of a task, its worker
rewrites the task's progress record (chunks, rows, the statistics of exactly those rows); a worker that takes
the task up again continues after them, so a kill loses at most the chunk in flight.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from builder.config import BuildConfig, ConfigError
from builder.tasks import Task
from output.layout import (CHUNK_GLOB, DATA_DIR, OLD_LAYOUT_DIRS, OLD_LAYOUT_FILES, PLAN_FILE, RUN_FILE, RUN_OUTPUTS, TASKS_DIR,
                           progress_name)
from output.store import OutputStore

logger = logging.getLogger(__name__)

# Settings that change how a run goes, never what it writes; everything else but the publish section (card,
# gallery, push) must match to resume.
OPERATIONAL = {"output_dir", "config", "overwrite", "prefetch_batches", "decode_threads", "fetch_concurrency",
               "recent_downloads_bytes", "cache_dir", "lease_seconds"}


@dataclass
class TaskProgress:
    """How far one task got: whole chunks written, rows in them, their stats."""

    chunks: int = 0
    rows: int = 0
    stats: dict = field(default_factory=dict)


def load_progress(store: OutputStore, task: int) -> TaskProgress:
    return TaskProgress(**store.read_json(progress_name(task), {}))


def save_progress(store: OutputStore, task: int, progress: TaskProgress) -> None:
    store.write_json(progress_name(task), asdict(progress))


def run_settings(cfg: BuildConfig) -> dict:
    """The settings every worker of a run must share, as JSON would read them back."""
    flat = {key: value for name, section in cfg.to_dict().items() if name != "publish"
            for key, value in section.items() if key not in OPERATIONAL}
    return json.loads(json.dumps(flat))


def start_or_join(store: OutputStore, cfg: BuildConfig, plan: list[Task] | None,
                  make_plan: Callable[[], list[Task]]) -> list[Task]:
    """Before any work: clear the output for --overwrite, refuse a changed run that has written rows, record a
    new one; then the run's task list: the saved one, checked against `plan` (the source's plan made now, when
    that is cheap), else `plan` or `make_plan()` saved. An earlier attempt that wrote no rows (it failed early,
    say on a mistyped model id) holds nothing to protect: a changed command starts over without --overwrite."""
    location = cfg.run.output_dir
    old = [name for pattern in OLD_LAYOUT_FILES for name in store.glob(pattern)]
    if old and not cfg.run.overwrite:
        raise ConfigError(f"--output_dir {location} holds an output of the older per-process layout ({old[0]}), "
                          "which this version cannot resume: finish it with the version that started it, or add "
                          "--overwrite to start over")
    if cfg.run.overwrite:
        for name in RUN_OUTPUTS + OLD_LAYOUT_DIRS:
            store.delete(name)
    current = run_settings(cfg)
    has_rows = bool(store.glob(f"{DATA_DIR}/*.parquet"))
    previous = store.read_json(RUN_FILE)
    if previous is not None and previous != current:
        changed = [key for key in sorted(previous.keys() | current.keys()) if previous.get(key) != current.get(key)]
        if has_rows:
            differences = ", ".join(f"{key} {previous.get(key)!r} -> {current.get(key)!r}" for key in changed)
            raise ConfigError(f"--output_dir {location} holds a run with other settings ({differences}); "
                              "run the same command to resume it, or add --overwrite to start over")
        logger.info("%s: an earlier attempt with other settings wrote no rows; starting over", location)
        store.delete(TASKS_DIR)
        previous = None
    elif previous is None and has_rows:
        raise ConfigError(f"--output_dir {location} holds {CHUNK_GLOB} from a run that did not record its settings; "
                          "add --overwrite to start over")
    if previous is None:
        store.write_json(RUN_FILE, current)
    return _task_list(store, location, plan, make_plan)


def _task_list(store: OutputStore, location: str, plan: list[Task] | None,
               make_plan: Callable[[], list[Task]]) -> list[Task]:
    saved = store.read_json(PLAN_FILE)
    if saved is None:
        plan = plan if plan is not None else make_plan()
        store.write_json(PLAN_FILE, [task.to_dict() for task in plan])
        return plan
    tasks = [Task.from_dict(task) for task in saved]
    if plan is not None and plan != tasks:
        raise ConfigError(f"the source changed since the run in --output_dir {location} started: its files or row "
                          f"groups now make {len(plan)} tasks where {PLAN_FILE} lists {len(tasks)}"
                          f"{'' if len(plan) != len(tasks) else ' with other rows'}; restore the source, or add "
                          "--overwrite to start over")
    return tasks

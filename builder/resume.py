"""Picking a run up where it stopped: what each process has durably written, and whether the run is the same.

After each chunk is on disk a process rewrites its record (`output.layout.rank_record_path`): chunks and rows
written so far and the statistics of exactly those rows. Re-running the same command skips the recorded rows
of the source and continues; a kill loses at most the chunk in flight. The first run also records its
settings (`output.layout.run_record_path`); a re-run whose settings would change results is refused, naming them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from builder.config import BuildConfig, ConfigError
from output.durable import write_json_durably
from output.layout import DATA_DIR, RECORDS, RUN_OUTPUTS, rank_record_path, run_record_path, served_parquet_files

logger = logging.getLogger(__name__)

# Settings that change how a run goes, never what it writes; everything else but the publish section (card,
# gallery, push) must match to resume.
OPERATIONAL = {"output_dir", "config", "overwrite", "prefetch_batches", "decode_threads", "fetch_concurrency",
               "recent_downloads_bytes", "cache_dir"}


@dataclass
class RankRecord:
    """How far one process got: whole chunks written, rows in them, their stats; `done` once it finished."""

    chunks: int = 0
    rows: int = 0
    done: bool = False
    stats: dict = field(default_factory=dict)


def load_record(output_dir: Path, rank: int) -> RankRecord:
    path = rank_record_path(output_dir, rank)
    return RankRecord(**json.loads(path.read_text())) if path.exists() else RankRecord()


def save_record(output_dir: Path, rank: int, record: RankRecord) -> None:
    write_json_durably(rank_record_path(output_dir, rank), asdict(record))


def run_settings(cfg: BuildConfig, world_size: int) -> dict:
    """The settings a resumed run must share with the first one, as JSON would read them back."""
    flat = {key: value for name, section in cfg.to_dict().items() if name != "publish"
            for key, value in section.items() if key not in OPERATIONAL}
    return json.loads(json.dumps({"world_size": world_size, **flat}))


def start_or_resume(output_dir: Path, cfg: BuildConfig, world_size: int, overwrite: bool) -> None:
    """Main process, before any work: clear the folder for --overwrite, refuse a changed run that has written
    rows, record a new one. An earlier attempt that wrote no rows (it failed early, say on a mistyped model id)
    holds nothing to protect: a changed command starts over without --overwrite."""
    output_dir = Path(output_dir)
    if overwrite:
        remove_run_outputs(output_dir, RUN_OUTPUTS)
    current = run_settings(cfg, world_size)
    run_file = run_record_path(output_dir)
    has_rows = bool(served_parquet_files(output_dir))
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        changed = [key for key in sorted(previous.keys() | current.keys()) if previous.get(key) != current.get(key)]
        if not changed:
            return
        if has_rows:
            differences = ", ".join(f"{key} {previous.get(key)!r} -> {current.get(key)!r}" for key in changed)
            raise ConfigError(f"--output_dir {output_dir} holds a run with other settings ({differences}); "
                              "run the same command to resume it, or add --overwrite to start over")
        logger.info("%s: an earlier attempt with other settings wrote no rows; starting over", output_dir)
        remove_run_outputs(output_dir, RECORDS)
    elif has_rows:
        raise ConfigError(f"--output_dir {output_dir} holds {DATA_DIR}/*.parquet from a run that did not record its "
                          "settings; add --overwrite to start over")
    write_json_durably(run_file, current)


def remove_run_outputs(output_dir: Path, names: tuple[str, ...]) -> None:
    """Delete these files or folders of `output_dir`, those that exist."""
    for name in names:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

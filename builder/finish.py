"""Finishing a run once every task is done: merged stats, the card, the gallery, the viewer checks, the push.

    python -m builder.finish OUTPUT_DIR

The worker that finds every task done finishes the run (one worker: they agree through a lease, as on a task,
and a run finished with the same publish settings is not finished again). The command above does it on demand,
with the config the run saved: after a finishing worker was killed, or to redo the card and push. Every step
rewrites the same files from the same chunks, and a push sends only what the Hub lacks, so finishing twice, or
two processes finishing at once, leaves the same output.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from builder.card_inputs import card_inputs
from builder.claims import Board, Heartbeat, worker_id
from builder.cli import failed
from builder.config import BuildConfig, ConfigError, parse_config
from builder.hub import PushError, push_output
from builder.source import ResolvedSource, check_source
from builder.stats import format_stats, merge_stats
from dataset_card.card import write_card
from dataset_card.gallery import write_gallery
from output.durable import stale_temp_files
from output.layout import (CHUNK_GLOB, CONFIG_FILE, DONE_GLOB, FINISHED_FILE, FINISHING_FILE, PLAN_FILE,
                           STATS_FILE)
from output.store import OutputStore
from output.viewer import ViewerCheckError, check_viewer_ready

logger = logging.getLogger(__name__)


def finish(store: OutputStore, cfg: BuildConfig, source: ResolvedSource) -> dict:
    """Merge the tasks' stats, write the card and gallery (rendered locally, then stored), check and push;
    returns the merged stats. Every task must be done."""
    if store.is_local:  # what killed workers left half-written; a live writer's temp file is seconds old
        for leftover in stale_temp_files(store.local_path(), older_than=cfg.run.lease_seconds):
            leftover.unlink(missing_ok=True)
    merged = merge_stats([store.read_json(name)["stats"] for name in store.glob(DONE_GLOB)])
    store.write_json(STATS_FILE, merged)
    chunks = [store.chunk(name) for name in store.glob(CHUNK_GLOB)]
    inputs = card_inputs(cfg, source)
    with _rendering_folder(store) as folder:
        write_card(folder, chunks, inputs, merged)
        write_gallery(folder, chunks, inputs)
        if not store.is_local:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                store.upload(path, path.relative_to(folder).as_posix())
    logger.info("done: %s\n%s", store.location, format_stats(merged))
    publish = cfg.publish
    if publish.push_to_hub:
        check_viewer_ready(store.local_path())
        push_output(store.local_path(), publish.push_to_hub, private=publish.private, revision=publish.revision)
    store.write_json(FINISHED_FILE, _finished_record(cfg))
    return merged


@contextmanager
def _rendering_folder(store: OutputStore):
    """Where the card and gallery are written: the output itself if local, else a temp folder to upload."""
    if store.is_local:
        yield store.local_path()
    else:
        with tempfile.TemporaryDirectory(prefix="card-") as folder:
            yield Path(folder)


def _finished_record(cfg: BuildConfig) -> dict:
    """What a finished run records: its publish settings, so that a re-run asking for another card or push
    (say, adding --push_to_hub) finishes again, and an unchanged one does not."""
    return {"publish": dataclasses.asdict(cfg.publish)}


def finish_once(store: OutputStore, board: Board, cfg: BuildConfig, source: ResolvedSource,
                tasks: int) -> dict | None:
    """`finish`, by one worker: none if finished already with these publish settings, or if another live
    worker is finishing. Returns the merged stats if this worker finished."""
    if store.read_json(FINISHED_FILE) == _finished_record(cfg):
        logger.info("%s is finished already", store.location)
        return None
    if len(board.done()) < tasks or not board.take(FINISHING_FILE):
        return None
    try:
        with Heartbeat(board, FINISHING_FILE):
            return finish(store, cfg, source)
    finally:  # a failed push is retried by the next worker or command at once, not after the lease
        board.release(FINISHING_FILE)


def finish_command(output_dir: str) -> dict:
    """`python -m builder.finish OUTPUT_DIR`: the run's saved config, every task checked done, then `finish`."""
    store = OutputStore(output_dir)
    if not store.exists(CONFIG_FILE) or not store.exists(PLAN_FILE):
        raise ConfigError(f"{output_dir} holds no run of this builder to finish (no {CONFIG_FILE} and {PLAN_FILE})")
    with tempfile.NamedTemporaryFile(suffix=".yaml") as saved:
        saved.write(store.read_bytes(CONFIG_FILE))
        saved.flush()
        cfg = parse_config(["--config", saved.name, "--output_dir", output_dir])
    tasks = len(store.read_json(PLAN_FILE))
    done = len(Board(store, worker_id(), cfg.run.lease_seconds).done())
    if done < tasks:
        raise ConfigError(f"{output_dir}: {tasks - done} of {tasks} tasks are not done yet; run the build command "
                          "again (any number of workers) to finish them")
    return finish(store, cfg, check_source(cfg.source))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m builder.finish OUTPUT_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("builder").setLevel(logging.INFO)
    try:
        finish_command(argv[0])
    except (ConfigError, ViewerCheckError, PushError) as err:
        return failed(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One build: this process's share of the source, through every stage, into parquet chunks.

The registered stages (`map_fns.registry.STAGES`) are chained as one `IterableDataset.map(batched=True)` each, so
nothing is materialised: rows flow from the stream through fetch, caption, rank, rerank and repair into the
writer one batch at a time.
With --retry_failed the source is an earlier output: its fetch_error rows go through the stages again and
every other row is carried over as it was.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path

from accelerate import PartialState

from builder.card_inputs import card_inputs
from builder.cli import agree_on
from builder.config import BuildConfig, save_config
from builder.hub import push_output
from builder.interrupt import RunInterrupted, stop_on_signals
from builder.prefetch import map_ahead
from builder.progress import RankProgress
from builder.resume import RankRecord, load_record, save_record, start_or_resume
from builder.reuse import ResultReuse
from builder.resolve import check_hub_dataset, check_models
from builder.source import ResolvedSource, check_hub_columns, open_stream
from builder.stats import RunStats, format_stats, merge_stats
from dataset_card.card import write_card
from dataset_card.gallery import write_gallery
from map_fns.registry import STAGES, check_chain
from map_fns.stage import ROW_KEY, StageContext, as_declared
from map_fns.status import FETCH_ERROR
from output.layout import config_path, stats_files, stats_path
from output.lock import output_lock
from output.schema import generated_columns, output_features
from output.viewer import check_viewer_ready
from output.writer import ChunkWriter, remove_leftovers

logger = logging.getLogger(__name__)

TINY_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! --preset tiny: tiny RANDOM models. Captions are noise. For smoke runs and tests only.\n"
    + "!" * 78
)


def join_processes() -> PartialState:
    """This process's place among the ones `accelerate launch` (or torchrun) started, with log lines that
    say which process wrote them."""
    import torch

    # cpu=True on GPU-less machines makes torchrun's processes one gloo group; otherwise each would think
    # it is alone and read every row.
    state = PartialState(cpu=not torch.cuda.is_available())
    logging.basicConfig(format=f"%(asctime)s rank{state.process_index} %(name)s: %(message)s")
    for package in ("builder", "map_fns", "tools"):
        logging.getLogger(package).setLevel(logging.INFO)
    return state


def captioned(rows, source_columns, cfg: BuildConfig, device, stats: RunStats, read_local_files: bool):
    """`rows` through every registered stage, one batched `datasets` map each.

    The fetch stage runs ahead in a background thread (`--prefetch_batches`) so downloads overlap the model
    stages; each stage loads its model once and adds its seconds to `stats`; each stage's output columns are
    checked against its declaration. Rows whose key (image hash, else URL) an earlier row of this process had
    reuse that row's results instead of running the models again. Image cells naming local files are read only
    with `read_local_files` (a local source: a Hub dataset must not make us read and publish the machine's
    files).
    """
    check_chain(STAGES, set(source_columns) | {ROW_KEY})
    size = cfg.run.batch_size
    context = StageContext(device, cfg.run.precision, cfg.run.model_batch_size, read_local_files)
    counts_reuse = True  # the first reusing stage counts the rows it copies; later ones copy the same rows
    for stage in STAGES:
        fn = stats.timed(stage.name, as_declared(stage, stage.load(getattr(cfg, stage.name), context)))
        if stage.reuse:
            fn = ResultReuse(on_reused=stats.add_reused if counts_reuse else lambda count: None).wrap(fn)
            counts_reuse = False
        rows = map_ahead(rows, fn, cfg.run.prefetch_batches, size) if stage.run_ahead else \
            rows.map(fn, batched=True, batch_size=size)
    return rows


def split_retry(source_features, rows):
    """For --retry_failed: (rows carried over as they are, fetch_error rows stripped of their old results)."""
    carried = rows.filter(lambda row: row["status"] != FETCH_ERROR)
    generated = generated_columns()
    retried = rows.filter(lambda row: row["status"] == FETCH_ERROR).remove_columns(list(generated))
    features = {name: feature for name, feature in source_features.items() if name not in generated}
    return features, carried, retried


def build(cfg: BuildConfig, source: ResolvedSource, state: PartialState) -> dict | None:
    """Run (or resume) this process's share; the main process returns the merged stats once all are done.

    Raises `ConfigError` (in every process) when the output folder is in use or holds a different run,
    `RunInterrupted` on SIGTERM/SIGINT.
    """
    if cfg.run.preset == "tiny":
        from builder.tiny_models import build_tiny_models

        with state.main_process_first():
            build_tiny_models(cfg.run.cache_dir)
    with ExitStack() as held:  # the main process holds the output folder until the run ends
        agree_on(state, lambda: claim_output(cfg, source, state.num_processes, held))
        if cfg.run.preset == "tiny" and state.is_main_process:
            logger.warning(TINY_WARNING)
        return write_and_publish(cfg, source, state)


def claim_output(cfg: BuildConfig, source: ResolvedSource, world_size: int, held: ExitStack) -> None:
    """Main process, before anything is written: the models and a Hub source resolve (metadata only, one process
    asking the Hub), then the output folder is taken for this run alone (the lock stays in `held`), and the run
    starts in it or finds the earlier attempt to resume."""
    check_models(cfg)
    if source.hub_id:
        check_hub_dataset(source.hub_id, cfg.source.source_split)
        check_hub_columns(source, cfg.source)
    output_dir = Path(cfg.run.output_dir)
    held.enter_context(output_lock(output_dir))
    start_or_resume(output_dir, cfg, world_size, cfg.run.overwrite)


def write_and_publish(cfg: BuildConfig, source: ResolvedSource, state: PartialState) -> dict | None:
    """This process's rows into chunks; once every process is done, the main one writes the card and gallery
    and pushes, returning the merged stats."""
    output_dir = Path(cfg.run.output_dir)
    rank = state.process_index
    record = load_record(output_dir, rank)
    if record.rows and not record.done:
        logger.info("rank %d: resuming after %d rows in %d chunks", rank, record.rows, record.chunks)
    try:
        remove_leftovers(output_dir, rank, record.chunks)
        if not record.done:
            write_share(cfg, source, state, record)
    except RunInterrupted:
        raise
    except Exception:
        kept = load_record(output_dir, rank)  # what a re-run will resume from
        logger.exception("rank %d failed; the %d rows (%d chunks) it recorded are kept: run the same command "
                         "again to resume", rank, kept.rows, kept.chunks)
        raise
    save_stats(output_dir, rank, RunStats(record.stats))

    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    merged = merge_stats(stats_files(output_dir))
    save_config(cfg, config_path(output_dir))
    inputs = card_inputs(cfg, source)
    write_card(output_dir, inputs, merged)
    write_gallery(output_dir, inputs)
    logger.info("done: %s\n%s", output_dir, format_stats(merged))
    if cfg.publish.push_to_hub:
        check_viewer_ready(output_dir)
        push_output(output_dir, cfg.publish.push_to_hub, private=cfg.publish.private, revision=cfg.publish.revision)
    return merged


def write_share(cfg: BuildConfig, source: ResolvedSource, state: PartialState, record: RankRecord) -> None:
    """This process's rows after the recorded ones, through the stages into chunks; the record follows each."""
    output_dir, rank = Path(cfg.run.output_dir), state.process_index
    source_features, rows = open_stream(source, cfg.source, rank, state.num_processes)
    parts = [rows]
    if source.previous_output:
        source_features, carried, retried = split_retry(source_features, rows)
        parts = [carried, retried]
    parts = skip_rows(parts, record.rows)
    stats = RunStats(record.stats)
    outputs = parts[:-1] + [captioned(parts[-1], source_features, cfg, state.device, stats,
                                      read_local_files=source.read_local_files)]

    started, earlier_seconds = time.monotonic(), stats.active_seconds
    pushed: set[str] = set()  # files this run's --push_every pushes have sent

    def chunk_written(chunk) -> None:
        stats.add({"status": chunk.column("status").to_pylist(), "error": chunk.column("error").to_pylist()})
        stats.active_seconds = earlier_seconds + time.monotonic() - started
        record.chunks, record.rows, record.stats = record.chunks + 1, record.rows + chunk.num_rows, stats.to_dict()
        save_record(output_dir, rank, record)
        if state.is_main_process and cfg.publish.push_every and record.chunks % cfg.publish.push_every == 0:
            pushed.update(push_finished_chunks(cfg, pushed))

    writer = ChunkWriter(output_dir, rank, output_features(source_features), cfg.run.rows_per_chunk,
                         first_chunk=record.chunks, on_chunk=chunk_written)
    progress = RankProgress(rank, state.num_processes, cfg.source.max_samples, show_bar=state.is_main_process,
                            done=record.rows)
    with stop_on_signals(rank) as stop:
        for part in outputs:
            for batch in part.iter(batch_size=cfg.run.batch_size):
                writer.add(batch)
                progress.update(batch["status"])
                if stop:
                    progress.close()
                    raise RunInterrupted(stop.signum, f"rank {rank} stopped with {record.chunks} chunks "
                                         f"({record.rows} rows) written to {output_dir}; run the same command "
                                         "again to resume")
    progress.close()
    writer.close()
    record.done = True
    save_record(output_dir, rank, record)
    logger.info("rank %d wrote %d chunks", rank, record.chunks)


def push_finished_chunks(cfg: BuildConfig, pushed: set[str]) -> list[str]:
    """--push_every: every process's chunks on disk so far, but those `pushed` earlier in this run, go to the
    Hub while the run goes on; returns the ones pushed now. A chunk not yet recorded may go too: a resumed run
    rewrites it with the same rows. A failure only warns; the final push sends (and checks) everything."""
    try:
        return push_output(Path(cfg.run.output_dir), cfg.publish.push_to_hub, private=cfg.publish.private,
                           revision=cfg.publish.revision, final=False, skip=pushed)
    except Exception as err:  # a network hiccup must not stop hours of captioning
        logger.warning("pushing finished chunks failed, the run goes on (the final push retries): %s", err)
        return []


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


def save_stats(output_dir: Path, rank: int, stats: RunStats) -> None:
    stats.save(stats_path(output_dir, rank))

"""One build: this process's share of the source, through every stage, into parquet chunks.

The stages are chained with `IterableDataset.map(batched=True)`, so nothing is materialised: rows flow from
the stream through fetch, caption, rank, rerank and repair into the writer one batch at a time.
With --retry_failed the source is an earlier output: its fetch_error rows go through the stages again and
every other row is carried over as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import PartialState

from builder.config import BuildConfig, save_config
from builder.prefetch import prefetch, rows_of
from builder.progress import RankProgress
from builder.schema import OUTPUT_COLUMNS, output_features
from builder.source import ResolvedSource, open_stream
from builder.stats import RunStats, format_stats, merge_stats
from builder.writer import ChunkWriter
from dataset_card.card import write_card
from map_fns.status import FETCH_ERROR

logger = logging.getLogger(__name__)

TINY_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! --preset tiny: tiny RANDOM models. Captions are noise. For smoke runs and tests only.\n"
    + "!" * 78
)


def captioned(rows, cfg: BuildConfig, device, stats: RunStats):
    """`rows` through every stage. Fetching runs ahead in a background thread (bounded by
    `--prefetch_batches`) so downloads overlap the model stages; each stage loads its model once and adds
    its seconds to `stats`."""
    from datasets import IterableDataset

    from map_fns.caption import make_caption_fn
    from map_fns.fetch import make_fetch_fn
    from map_fns.rank import make_rank_fn
    from map_fns.repair import make_repair_fn
    from map_fns.rerank import make_rerank_fn

    size = cfg.run.batch_size
    fetched = rows.map(stats.timed("fetch", make_fetch_fn(cfg.fetch)), batched=True, batch_size=size)
    ahead = IterableDataset.from_generator(
        lambda: rows_of(prefetch(fetched.iter(batch_size=size), cfg.run.prefetch_batches))
    )
    engine = {"precision": cfg.run.precision, "model_batch_size": cfg.run.model_batch_size}
    stages = {"caption": make_caption_fn(cfg.caption, device, **engine), "rank": make_rank_fn(cfg.rank, device, **engine),
              "rerank": make_rerank_fn(cfg.rerank, device, **engine), "repair": make_repair_fn(cfg.repair, device, **engine)}
    for name, stage in stages.items():
        ahead = ahead.map(stats.timed(name, stage), batched=True, batch_size=size)
    return ahead


def split_retry(source_features, rows):
    """For --retry_failed: (rows carried over as they are, fetch_error rows stripped of their old results)."""
    carried = rows.filter(lambda row: row["status"] != FETCH_ERROR)
    retried = rows.filter(lambda row: row["status"] == FETCH_ERROR).remove_columns(list(OUTPUT_COLUMNS))
    features = {name: feature for name, feature in source_features.items() if name not in OUTPUT_COLUMNS}
    return features, carried, retried


def build(cfg: BuildConfig, source: ResolvedSource, state: PartialState) -> dict | None:
    """Run this process's share; the main process returns the merged stats once every process is done."""
    output_dir = Path(cfg.run.output_dir)
    rank = state.process_index
    if cfg.run.preset == "tiny":
        with state.main_process_first():
            from builder.tiny_models import build_tiny_models

            build_tiny_models(cfg.run.cache_dir)
        if state.is_main_process:
            logger.warning(TINY_WARNING)

    source_features, rows = open_stream(source, cfg.source, rank, state.num_processes)
    carried = None
    if source.previous_output:
        source_features, carried, rows = split_retry(source_features, rows)
    features = output_features(source_features)
    stats = RunStats()
    parts = ([carried] if carried is not None else []) + [captioned(rows, cfg, state.device, stats)]

    writer = ChunkWriter(output_dir, rank, features, cfg.run.rows_per_chunk)
    progress = RankProgress(rank, state.num_processes, cfg.source.max_samples, show_bar=state.is_main_process)
    for part in parts:
        for batch in part.iter(batch_size=cfg.run.batch_size):
            writer.add(batch)
            stats.add(batch)
            progress.update(batch["status"])
    progress.close()
    writer.close()
    stats.save(output_dir / "stats" / f"rank-{rank:05d}.json")
    logger.info("rank %d wrote %d chunks", rank, writer.chunks_written)

    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    merged = merge_stats(sorted((output_dir / "stats").glob("rank-*.json")))
    save_config(cfg, output_dir / "build_config.yaml")
    write_card(output_dir, cfg.to_dict(), merged)
    logger.info("done: %s\n%s", output_dir, format_stats(merged))
    return merged

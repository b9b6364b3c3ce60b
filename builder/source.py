"""The source: which rows, which columns, and which of them this process reads.

`resolve_source` only looks (a path check and a parquet footer read) so bad flags fail before any model
loads; `open_stream` then streams the rows with `datasets`, renamed to the output's column names and split
deterministically across processes.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from builder.config import ConfigError, SourceConfig
from builder.schema import OUTPUT_COLUMNS
from map_fns.fetch import embedded_bytes

logger = logging.getLogger(__name__)

URL_COLUMNS = ("URL", "url")
TEXT_COLUMNS = ("TEXT", "caption", "text")
IMAGE_COLUMN = "image"
HUB_ID = re.compile(r"^(?!.*(?:--|\.\.))(?:\w(?:[\w.-]*\w)?/)?\w(?:[\w.-]*\w)?$")  # never ./x, ../x, .x


def bundled_sample() -> str:
    """The small parquet of licensed photographs shipped in the package (see builder/sample/LICENSE.md)."""
    return str(Path(__file__).parent / "sample" / "sample.parquet")


@dataclass(frozen=True)
class ResolvedSource:
    """Where the rows come from: local parquet files, or a Hub dataset id."""

    name: str
    parquet_files: list[str] | None  # None for a Hub dataset
    hub_id: str | None = None
    previous_output: bool = False  # an earlier run's output, for --retry_failed


@dataclass(frozen=True)
class ColumnMap:
    """Source column names behind the output's URL / TEXT / image columns (None: the source has none)."""

    url: str | None
    text: str | None
    image: str | None

    def renames(self, columns: list[str], keep_generated: bool = False) -> dict[str, str]:
        """Source name -> output name, also moving aside source columns that clash with generated ones
        (unless the source is an earlier output of ours, whose generated columns are the point)."""
        renames = {src: dst for src, dst in ((self.url, "URL"), (self.text, "TEXT"), (self.image, IMAGE_COLUMN))
                   if src and src != dst}
        if not keep_generated:
            renames |= {column: f"source_{column}" for column in columns if column in OUTPUT_COLUMNS}
        return renames


def resolve_source(cfg: SourceConfig) -> ResolvedSource:
    """Find the parquet files of a local source, or recognise a Hub id; raise `ConfigError` if neither."""
    if cfg.retry_failed:
        files = sorted(glob.glob(str(Path(cfg.retry_failed).expanduser() / "data" / "train-*.parquet")))
        if not files:
            raise ConfigError(f"--retry_failed {cfg.retry_failed!r} holds no data/train-*.parquet to retry")
        return ResolvedSource(name=cfg.retry_failed, parquet_files=files, previous_output=True)
    source = cfg.source or bundled_sample()
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif path.is_file():
        files = [str(path)]
    elif glob.has_magic(source):
        files = sorted(glob.glob(str(path), recursive=True))
    elif HUB_ID.match(source) and not source.endswith(".parquet"):
        return ResolvedSource(name=source, parquet_files=None, hub_id=source)
    else:
        raise ConfigError(f"--source {source!r} is neither an existing file or folder nor a Hub dataset id")
    if not files:
        raise ConfigError(f"--source {source!r} holds no parquet file")
    return ResolvedSource(name=source, parquet_files=files)


def parquet_columns(files: list[str]) -> list[str]:
    """Column names from the first file's footer (no data read)."""
    try:
        return pq.read_schema(files[0]).names
    except (OSError, pa.ArrowInvalid) as err:
        raise ConfigError(f"--source file {files[0]!r} is not readable parquet: {err}") from None


def map_columns(columns: list[str], cfg: SourceConfig, source_name: str) -> ColumnMap:
    """Pick the URL, text and image columns (named by flags, else by the usual names); check they exist."""

    def pick(flag: str, named: str | None, usual: tuple[str, ...]) -> str | None:
        if named is not None:
            if named not in columns:
                raise ConfigError(f"--{flag} {named!r} is not a column of {source_name} (columns: {', '.join(columns)})")
            return named
        return next((name for name in usual if name in columns), None)

    mapping = ColumnMap(
        url=pick("url_column", cfg.url_column, URL_COLUMNS),
        text=pick("text_column", cfg.text_column, TEXT_COLUMNS),
        image=pick("image_column", cfg.image_column, (IMAGE_COLUMN,)),
    )
    if mapping.url is None and mapping.image is None:
        raise ConfigError(f"{source_name} has no URL column ({'/'.join(URL_COLUMNS)}) and no image column; "
                          "name one with --url_column or --image_column")
    if mapping.text is None:
        logger.warning("%s has no alt-text column (%s): TEXT will be empty", source_name, "/".join(TEXT_COLUMNS))
    return mapping


def row_key(url: str | None, image) -> str:
    """A row's identity for seeding: its URL, else a hash of its image bytes."""
    if url:
        return url
    data = embedded_bytes(image)
    return hashlib.sha256(data).hexdigest() if data else ""


def _with_null_string_column(stream, name: str):
    """Add an all-null string column, so every output has URL and TEXT whatever the source lacked."""
    from datasets import Value

    features = stream.features.copy()
    features[name] = Value("string")
    return stream.map(lambda batch: {name: [None] * len(next(iter(batch.values())))}, batched=True,
                      features=features)


def check_source(cfg: SourceConfig) -> ResolvedSource:
    """Everything about the source that can be checked without streaming it (Hub columns are checked on open)."""
    resolved = resolve_source(cfg)
    if resolved.parquet_files:
        columns = parquet_columns(resolved.parquet_files)
        map_columns(columns, cfg, resolved.name)
        if resolved.previous_output and "status" not in columns:
            raise ConfigError(f"--retry_failed {resolved.name!r} is not an output of this builder (no status column)")
    return resolved


def source_rows(resolved: ResolvedSource, cfg: SourceConfig) -> int | None:
    """How many rows the run will read, from parquet footers (no data read); None for a Hub source without
    --max_samples (counting it would mean asking the Hub)."""
    if resolved.parquet_files is None:
        return cfg.max_samples
    total = sum(pq.ParquetFile(path).metadata.num_rows for path in resolved.parquet_files)
    return min(total, cfg.max_samples) if cfg.max_samples else total


def open_stream(resolved: ResolvedSource, cfg: SourceConfig, rank: int, world_size: int):
    """This process's rows, streamed, with output column names and an internal `_row_key`; and their features.

    Work split: whole shards (files, else parquet row groups) per process when their count divides evenly
    by the number of processes, else every `world_size`-th row. `--max_samples` keeps the first N rows of
    the whole source, split row by row, so the result does not depend on the number of processes.
    """
    import datasets
    from datasets.distributed import split_dataset_by_node

    if resolved.hub_id:
        stream = datasets.load_dataset(resolved.hub_id, split=cfg.source_split, streaming=True)
    else:
        stream = datasets.load_dataset("parquet", data_files=resolved.parquet_files, split="train", streaming=True)
    if stream.features is None:
        stream = stream._resolve_features()
    columns = list(stream.features)
    mapping = map_columns(columns, cfg, resolved.name)
    stream = stream.rename_columns(mapping.renames(columns, keep_generated=resolved.previous_output))
    if isinstance(stream.features.get(IMAGE_COLUMN), datasets.Image):  # before any map: corrupt bytes raise
        stream = stream.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    for column, present in (("URL", mapping.url), ("TEXT", mapping.text)):
        if present is None:
            stream = _with_null_string_column(stream, column)
    if cfg.max_samples is not None:
        stream = stream.take(cfg.max_samples)
    elif stream.num_shards % world_size:
        stream = stream.reshard()
    # take(n) spreads n over the shards, so a first-N selection must be split row by row
    stream = split_dataset_by_node(stream, rank=rank, world_size=world_size,
                                   strategy="auto" if cfg.max_samples is None else "examples")
    has_image = mapping.image is not None
    features = stream.features
    return features, stream.map(
        lambda batch: {"_row_key": [
            row_key(url, batch[IMAGE_COLUMN][i] if has_image else None) for i, url in enumerate(batch["URL"])
        ]},
        batched=True,
    )

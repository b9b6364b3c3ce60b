"""The source: which rows, which columns, and how they are cut into tasks.

`check_source` only looks (a path check and the parquet footers) so that a bad source fails in a second, with one
line, before any model loads; `plan_tasks` cuts it into tasks (`builder.tasks`) from the same footers;
`open_stream` streams one task's rows with `datasets`, renamed to the output's column names.
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
from builder.tasks import Piece, Task, open_parquet, plan_from_footers, plan_from_shards, read_pieces, row_groups
from map_fns.fetch import image_source
from map_fns.images import one_line
from map_fns.row_filters import RowFilter
from map_fns.stage import ROW_KEY
from output.layout import CHUNK_GLOB, chunk_files
from output.schema import generated_columns

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
    """Where the rows come from: local parquet files (only those holding rows), or a Hub dataset id."""

    name: str
    parquet_files: list[str] | None  # None for a Hub dataset
    hub_id: str | None = None
    previous_output: bool = False  # an earlier run's output, for --retry_failed
    rows: int | None = None  # in all the files, from their footers; None for a Hub dataset
    row_groups: tuple[tuple[int, ...], ...] | None = None  # rows of each file's row groups, from the footers

    @property
    def shown_name(self) -> str:
        """The source as the card names it: as given, but the bundled sample by its file name (a path of the
        machine that ran the build means nothing to a reader)."""
        return Path(self.name).name if self.name == bundled_sample() else self.name

    @property
    def read_local_files(self) -> bool:
        """Whether image cells naming local files may be read: for a local source only (a Hub dataset must not
        make us read, and publish, the machine's files)."""
        return self.hub_id is None


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
            generated = generated_columns()
            renames |= {column: f"source_{column}" for column in columns if column in generated}
        return renames


def find_parquet_files(cfg: SourceConfig) -> ResolvedSource:
    """The parquet files a local source names (unchecked), or its Hub id; raise `ConfigError` if neither."""
    if cfg.retry_failed:
        files = [str(path) for path in chunk_files(Path(cfg.retry_failed).expanduser())]
        if not files:
            raise ConfigError(f"--retry_failed {cfg.retry_failed!r} holds no {CHUNK_GLOB} to retry")
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


def resolve_source(cfg: SourceConfig) -> ResolvedSource:
    """`find_parquet_files`, then every file's footer checked: files without rows are left out (with a warning:
    they hold nothing to lose), and a file `datasets` could not stream whole is refused, naming it."""
    found = find_parquet_files(cfg)
    if found.parquet_files is None:
        return found
    flag = "--retry_failed" if found.previous_output else "--source"
    kept, groups, empty, rows, first = [], [], [], 0, None
    for path in found.parquet_files:
        metadata = _footer(path, flag)
        if metadata is None or metadata.num_rows == 0:
            empty.append(path)
            continue
        schema = metadata.schema.to_arrow_schema()
        if first is None:
            _check_columns(schema, path, flag)
            first = (path, schema)
        elif not schema.remove_metadata().equals(first[1].remove_metadata()):
            raise ConfigError(f"{flag} file {path!r} has other columns than {first[0]!r} "
                              f"({_schema_difference(first[1], schema)}); a source must have one schema")
        kept.append(path)
        groups.append(row_groups(metadata))
        rows += metadata.num_rows
    if empty:
        logger.warning("%s %r: leaving out %d file(s) without rows: %s", flag, found.name, len(empty),
                       ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else ""))
    if not kept:
        raise ConfigError(f"{flag} {found.name!r} has no rows (its {len(empty)} parquet file(s) are empty)")
    return ResolvedSource(found.name, kept, previous_output=found.previous_output, rows=rows,
                          row_groups=tuple(groups))


def _footer(path: str, flag: str) -> pq.FileMetaData | None:
    """The file's footer; None for a file of 0 bytes (an interrupted copy holds no rows yet)."""
    try:
        if Path(path).stat().st_size == 0:
            return None
        return pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowInvalid) as err:
        raise ConfigError(f"{flag} file {path!r} is not readable parquet: {one_line(err)}") from None


def _check_columns(schema: pa.Schema, path: str, flag: str) -> None:
    """Refuse what `datasets` cannot stream: a repeated column name, a map-typed column (no `datasets` type)."""
    repeated = sorted({name for name in schema.names if schema.names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{flag} file {path!r} has duplicate column names: {', '.join(repeated)}; "
                          "rename them so every column can be kept")
    for field in schema:
        if _holds_map(field.type):
            raise ConfigError(f"{flag} file {path!r}: column {field.name!r} is {field.type}, which `datasets` "
                              "cannot read; store it as a list of {key, value} structs")


def _holds_map(arrow_type: pa.DataType) -> bool:
    if pa.types.is_map(arrow_type):
        return True
    return any(_holds_map(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def _schema_difference(expected: pa.Schema, got: pa.Schema) -> str:
    """The first column that differs, for the error line."""
    for name in dict.fromkeys(expected.names + got.names):
        have = got.field(name).type if name in got.names else None
        want = expected.field(name).type if name in expected.names else None
        if have != want:
            return f"column {name!r}: {have or 'missing'} instead of {want or 'absent'}"
    return "column order differs"


def is_image_type(arrow_type: pa.DataType) -> bool:
    """Whether a column can hold image bytes: binary, or a struct with binary `bytes` (`datasets.Image`)."""
    def binary(candidate: pa.DataType) -> bool:
        return pa.types.is_binary(candidate) or pa.types.is_large_binary(candidate)

    return binary(arrow_type) or (pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0
                                  and binary(arrow_type.field("bytes").type))


def map_columns(schema: pa.Schema, cfg: SourceConfig, source_name: str) -> ColumnMap:
    """Pick the URL, text and image columns (named by flags, else by the usual names); check they exist, and that
    the image column can hold images (an auto-detected `image` column that cannot is passed through, not used)."""
    columns = schema.names

    def pick(flag: str, named: str | None, usual: tuple[str, ...]) -> str | None:
        if named is not None:
            if named not in columns:
                raise ConfigError(f"--{flag} {named!r} is not a column of {source_name} "
                                  f"(columns: {', '.join(columns)})")
            return named
        return next((name for name in usual if name in columns), None)

    image = pick("image_column", cfg.image_column, (IMAGE_COLUMN,))
    if image is not None and not is_image_type(schema.field(image).type):
        kind = schema.field(image).type
        if cfg.image_column is not None:
            raise ConfigError(f"--image_column {image!r} of {source_name} holds {kind}, not image bytes (binary, or a "
                              "datasets.Image); a column of URLs goes to --url_column")
        logger.warning("%s: column %r holds %s, not image bytes: passed through, not captioned from", source_name,
                       image, kind)
        image = None
    mapping = ColumnMap(
        url=pick("url_column", cfg.url_column, URL_COLUMNS),
        text=pick("text_column", cfg.text_column, TEXT_COLUMNS),
        image=image,
    )
    if mapping.url is None and mapping.image is None:
        raise ConfigError(f"{source_name} has no URL column ({'/'.join(URL_COLUMNS)}) and no image column; "
                          "name one with --url_column or --image_column")
    if mapping.text is None:
        logger.warning("%s has no alt-text column (%s): TEXT will be empty", source_name, "/".join(TEXT_COLUMNS))
    if image is not None and image in (mapping.url, mapping.text):
        raise ConfigError(f"--image_column {image!r} is also the {'URL' if image == mapping.url else 'text'} column")
    return mapping


def row_key(url: str | None, image) -> str:
    """A row's identity, which seeds its samples and lets a repeated row reuse results: a hash of its image
    bytes when it carries them (one URL may stand for many embedded images), else where its image comes from."""
    data, address = image_source(url, image)
    return hashlib.sha256(data).hexdigest() if data else (address or "")


def _with_null_string_column(stream, name: str):
    """Add an all-null string column, so every output has URL and TEXT whatever the source lacked."""
    from datasets import Value

    features = stream.features.copy()
    features[name] = Value("string")
    return stream.map(lambda batch: {name: [None] * len(next(iter(batch.values())))}, batched=True,
                      features=features)


def check_filter_columns(schema: pa.Schema, filters: list[RowFilter], source_name: str) -> None:
    """Every score filter's column is a column of the source (a typo would otherwise keep every row out)."""
    for row_filter in filters:
        if row_filter.column not in schema.names:
            raise ConfigError(f"filter {str(row_filter)!r} reads column {row_filter.column!r}, which is not a column "
                              f"of {source_name} (columns: {', '.join(schema.names)})")


def check_source(cfg: SourceConfig, filters: list[RowFilter] = ()) -> ResolvedSource:
    """Everything about the source that can be checked without streaming it (Hub columns are checked on open):
    also that the columns `filters` read are there."""
    resolved = resolve_source(cfg)
    if resolved.parquet_files:
        schema = pq.read_schema(resolved.parquet_files[0])
        map_columns(schema, cfg, resolved.name)
        check_filter_columns(schema, filters, resolved.name)
        if resolved.previous_output and "status" not in schema.names:
            raise ConfigError(f"--retry_failed {resolved.name!r} is not an output of this builder (no status column)")
    return resolved


def source_rows(resolved: ResolvedSource, cfg: SourceConfig) -> int | None:
    """How many rows the run will read, from parquet footers (no data read); None for a Hub source without
    --max_samples (counting it would mean asking the Hub)."""
    if resolved.rows is None:
        return cfg.max_samples
    return min(resolved.rows, cfg.max_samples) if cfg.max_samples else resolved.rows


def valid_utf8(table: pa.Table) -> pa.Table:
    """`table` with string cells that are not valid UTF-8 (parquet writers do not always check) repaired, each
    bad byte becoming U+FFFD, so a scraped alt-text with stray bytes keeps its row instead of stopping the run."""
    for index, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        column = table.column(index)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            raw = column.cast(pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary()).to_pylist()
            texts, bad = [], 0
            for value in raw:
                try:
                    texts.append(None if value is None else value.decode("utf-8"))
                except UnicodeDecodeError:
                    texts.append(value.decode("utf-8", "replace"))
                    bad += 1
            logger.warning("column %r: %d cell(s) of invalid UTF-8 kept with their bad bytes as U+FFFD", field.name,
                           bad)
            table = table.set_column(index, field, pa.array(texts, field.type))
    return table


def plan_tasks(resolved: ResolvedSource, cfg: SourceConfig, rows_per_task: int) -> list[Task]:
    """The source's tasks (`builder.tasks`): from the footers read by `resolve_source` for local files; for a Hub
    dataset, from the footers of the parquet files `datasets` resolves for the split (read by byte ranges), or
    one task per shard when it is not parquet."""
    if resolved.parquet_files is not None:
        return plan_from_footers(zip(resolved.parquet_files, resolved.row_groups), rows_per_task, cfg.max_samples)
    import datasets

    builder = datasets.load_dataset_builder(resolved.hub_id)
    files = builder.config.data_files.get(cfg.source_split) if builder.config.data_files else None
    if builder.name == "parquet" and files:
        footers = ((file, row_groups(open_parquet(file).metadata)) for file in files)
        return plan_from_footers(footers, rows_per_task, cfg.max_samples)
    if cfg.max_samples is not None:
        raise ConfigError(f"--max_samples needs a parquet source; {resolved.name!r} is {builder.name}")
    logger.warning("%s is not parquet: one task per file, and a resumed task re-reads its file up to where it "
                   "stopped", resolved.name)
    return plan_from_shards(_load(resolved, cfg).num_shards)


def open_stream(resolved: ResolvedSource, cfg: SourceConfig, task: Task, skip: int = 0):
    """The task's rows after its first `skip`, streamed, with output column names and an internal `_row_key`;
    and the features the output keeps for them (image features decodable, as the source declared them).

    Nothing is decoded: `datasets` would otherwise open every image cell on its own (and fetch a cell whose path is
    a URL, past our address guard and deadline); the fetch stage reads image cells itself.
    """
    import datasets

    stream = _task_rows(resolved, cfg, task, skip)
    declared = stream.features
    stream = stream.decode(False)  # first: renames and maps would decode every image cell
    columns = list(declared)
    mapping = map_columns(declared.arrow_schema, cfg, resolved.name)
    renames = mapping.renames(columns, keep_generated=resolved.previous_output)
    stream = stream.rename_columns(renames)
    for column, present in (("URL", mapping.url), ("TEXT", mapping.text)):
        if present is None:
            stream = _with_null_string_column(stream, column)
    output = datasets.Features({renames.get(name, name): feature for name, feature in declared.items()})
    output.update({name: feature for name, feature in stream.features.items() if name not in output})
    has_image = mapping.image is not None
    return output, stream.map(
        lambda batch: {ROW_KEY: [
            row_key(url, batch[IMAGE_COLUMN][i] if has_image else None) for i, url in enumerate(batch["URL"])
        ]},
        batched=True,
    )


def _task_rows(resolved: ResolvedSource, cfg: SourceConfig, task: Task, skip: int):
    """The task's source rows after its first `skip` as a `datasets` stream, strings made valid UTF-8: its
    pieces read straight from the parquet files (seeking, `builder.tasks.read_pieces`), or its shard of the
    `datasets` stream (skipping)."""
    import datasets
    from datasets.iterable_dataset import ArrowExamplesIterable

    if task.shard is not None:
        stream = _load(resolved, cfg)
        stream = stream.shard(num_shards=stream.num_shards, index=task.shard)
        stream = stream.skip(skip) if skip else stream
        return stream.with_format("arrow").map(valid_utf8, batched=True, features=stream.features).with_format(None)
    features = datasets.Features.from_arrow_schema(open_parquet(task.pieces[0].file).schema_arrow)
    tables = ArrowExamplesIterable(_numbered_tables, {"pieces": task.pieces, "skip": skip})
    return datasets.IterableDataset(tables, info=datasets.DatasetInfo(features=features))


def _numbered_tables(pieces: tuple[Piece, ...], skip: int):
    """`read_pieces` as the (key, table) pairs a `datasets` arrow iterable yields, made valid UTF-8 here rather
    than in a map of their own: every batched map concatenates its input rows' keys into its output rows' keys,
    so each extra map upstream of the stages would multiply the keys' length (and time) by its batch size."""
    for number, table in enumerate(read_pieces(pieces, skip)):
        yield number, valid_utf8(table)


def _load(resolved: ResolvedSource, cfg: SourceConfig):
    """A Hub source as a `datasets` stream with its features known (read from the first rows if need be)."""
    import datasets

    stream = datasets.load_dataset(resolved.hub_id, split=cfg.source_split, streaming=True)
    return stream if stream.features is not None else stream._resolve_features()


def check_hub_columns(resolved: ResolvedSource, cfg: SourceConfig, filters: list[RowFilter]) -> None:
    """A Hub source's columns, checked as a local source's footer is, before any output is written (the main
    process asks; streaming it to learn them reads no more than its first rows)."""
    schema = _load(resolved, cfg).features.arrow_schema
    map_columns(schema, cfg, resolved.name)
    check_filter_columns(schema, filters, resolved.name)


"""The viewer rules (DESIGN §3, §5), checked before a push: the Hub serves the parquet already in a repo as is,
so a folder that breaks one of them would be pushed in vain, however large.

Only parquet footers are read, never data pages: an output can be terabytes.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import Features, Value
from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns
from huggingface_hub import DatasetCard

from output.layout import CARD, DATA_DIR, PUSHED_FOLDERS, SPLIT, card_path, served_parquet_files

MAX_ROW_GROUP_BYTES = 100 * 2**20  # uncompressed; the viewer reads a whole row group at a time
MAX_FILES_PER_FOLDER = 10_000
MAX_NAMED = 20  # locations named per problem line; the rest are counted


class ViewerCheckError(ValueError):
    """An output folder the Hub viewer could not serve as is; the message has one problem per line."""


def check_viewer_ready(output_dir: Path, *, max_row_group_bytes: int = MAX_ROW_GROUP_BYTES,
                       max_files_per_folder: int = MAX_FILES_PER_FOLDER) -> None:
    """Raise `ViewerCheckError` listing every problem found (and where) in one go, so one fix-up suffices."""
    output_dir = Path(output_dir)
    problems: dict[str, list[str]] = defaultdict(list)  # problem -> offending files (relative paths)
    data_files = served_parquet_files(output_dir)
    if not data_files:
        problems[f"no data files ({DATA_DIR}/*.parquet)"] = []
    first: tuple[str, pa.Schema] | None = None
    for path in data_files:
        name = path.relative_to(output_dir).as_posix()
        try:
            parquet = pq.ParquetFile(path)
            schema, metadata = parquet.schema_arrow, parquet.metadata
        except (OSError, pa.ArrowException) as error:
            problems[f"not a readable parquet file ({error})"].append(name)
            continue
        if first is None:
            first = name, schema
        elif not schema.equals(first[1], check_metadata=True):
            problems[f"schema differs from {first[0]}: {_schema_difference(first[1], schema)}"].append(name)
        if not _url_is_plain_string(schema):
            problems["URL is not a plain string column (an Image of external URLs breaks the viewer)"].append(name)
        for index in range(metadata.num_row_groups):
            size = metadata.row_group(index).total_byte_size
            if size > max_row_group_bytes:
                problems[f"row groups over {max_row_group_bytes:,} bytes uncompressed"].append(
                    f"{name} row group {index} ({size:,} bytes)")
        if not _has_page_index(metadata):
            problems["column chunks without a page index (offset index)"].append(name)
    for folder in PUSHED_FOLDERS:
        for directory, _, files in os.walk(output_dir / folder):
            count = sum(not file.startswith(".") for file in files)
            if count > max_files_per_folder:
                problems[f"more than {max_files_per_folder:,} files in one folder"].append(
                    f"{Path(directory).relative_to(output_dir).as_posix()}/ ({count:,} files)")
    _check_card(output_dir, [path.relative_to(output_dir).as_posix() for path in data_files], problems)
    if problems:
        lines = [f"{problem}: {_name(places)}" if places else problem for problem, places in problems.items()]
        raise ViewerCheckError("\n".join([f"{output_dir} is not ready for the Hub viewer: {len(lines)} problem"
                                          f"{'s' if len(lines) > 1 else ''}", *lines]))


def chunk_files_problem(task_rows: list[int], rows_per_chunk: int, batch_size: int,
                        max_files_per_folder: int = MAX_FILES_PER_FOLDER) -> str | None:
    """What is wrong, if tasks of `task_rows` rows would write more chunk files into data/ than one folder may
    hold; None if it fits. Checked before a run, since the folder rule is only enforced when pushing: a
    web-scale run at a small --rows_per_chunk would otherwise learn it after days of captioning."""
    def files(chunk_flag: int) -> int:
        rows_in_chunk = math.ceil(chunk_flag / batch_size) * batch_size  # chunks end on whole batches
        return sum(math.ceil(rows / rows_in_chunk) for rows in task_rows)

    count = files(rows_per_chunk)
    if count <= max_files_per_folder:
        return None
    head = (f"{sum(task_rows):,} rows in {len(task_rows):,} tasks, in chunks of --rows_per_chunk {rows_per_chunk:,}, "
            f"make about {count:,} files in {DATA_DIR}/, over the Hub's {max_files_per_folder:,} per folder")
    if len(task_rows) > max_files_per_folder:  # every task writes at least one file
        return f"{head}: use --rows_per_task {math.ceil(sum(task_rows) / max_files_per_folder):,} or more"
    low, high = 1, math.ceil(max(task_rows) / batch_size)  # in batches; `high` makes one file per task
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if files(middle * batch_size) <= max_files_per_folder else (middle + 1, high)
    return f"{head}: use --rows_per_chunk {low * batch_size:,} or more"


def _schema_difference(first: pa.Schema, other: pa.Schema) -> str:
    """What differs, in columns and types first: that is what a reader of the message has to fix."""
    theirs = {field.name: field for field in other}
    parts = []
    if missing := [name for name in first.names if name not in theirs]:
        parts.append("missing columns " + ", ".join(missing))
    if extra := [name for name in other.names if name not in first.names]:
        parts.append("extra columns " + ", ".join(extra))
    if changed := [f"{field.name} {_type(theirs[field.name])} (not {_type(field)})"
                   for field in first if field.name in theirs and not theirs[field.name].equals(field)]:
        parts.append("column types " + ", ".join(changed))
    if not parts and first.names != other.names:
        parts.append("column order")
    first_meta, other_meta = first.metadata or {}, other.metadata or {}
    if keys := sorted(key for key in {*first_meta, *other_meta} if first_meta.get(key) != other_meta.get(key)):
        parts.append("schema metadata " + ", ".join(key.decode() for key in keys))
    return "; ".join(parts)


def _type(field: pa.Field) -> str:
    return f"{field.type}{'' if field.nullable else ' not null'}"


def _url_is_plain_string(schema: pa.Schema) -> bool:
    """Both the arrow type and the `datasets` feature (from the `huggingface` metadata) must say string."""
    if "URL" not in schema.names:
        return True
    arrow_type, feature = schema.field("URL").type, Features.from_arrow_schema(schema)["URL"]
    plain = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    return plain and (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))


def _has_page_index(metadata: pq.FileMetaData) -> bool:
    """The offset index (where each page starts) on every column: what lets the viewer read single pages. The
    column index (page min/max) is not required: writers leave it out where they keep no statistics, as for
    image bytes of a few kB and more."""
    return all(column.has_offset_index
               for group in range(metadata.num_row_groups)
               for column in (metadata.row_group(group).column(i) for i in range(metadata.num_columns)))


def _check_card(output_dir: Path, data_files: list[str], problems: dict[str, list[str]]) -> None:
    """README.md parses as the Hub parses it, and its train split (its default config's, else the one file names
    make) covers every data file."""
    if not card_path(output_dir).is_file():
        problems[f"{CARD} is missing"] = []
        return
    try:
        card = DatasetCard.load(card_path(output_dir))
    except (yaml.YAMLError, ValueError, OSError) as error:  # bad YAML, a block that is not a mapping, bad bytes
        problems[f"{CARD} YAML is not valid: {' '.join(str(error).split())}"] = []
        return
    configs = [config for config in card.data.get("configs") or [] if isinstance(config, dict)]
    config = next((c for c in configs if c.get("config_name") == "default"), configs[0] if configs else None)
    if config is None:
        _check_split_by_name(output_dir, data_files, problems)
        return
    patterns = _train_patterns(config.get("data_files"))
    if unmatched := [name for name in data_files if not any(_glob_match(name, p) for p in patterns)]:
        problem = f"{CARD} config {config.get('config_name')!r} train data_files {patterns} do not match"
        problems[problem].extend(unmatched)


def _check_split_by_name(output_dir: Path, data_files: list[str], problems: dict[str, list[str]]) -> None:
    """Without `configs` (our cards have none) the Hub and `datasets` split a repo's files by name, `data/train-*`
    being the train split: every data file must land in train, and no other file in any split."""
    try:
        found = DataFilesDict.from_patterns(get_data_patterns(output_dir.as_posix()), base_path=output_dir.as_posix())
    except EmptyDatasetError:
        found = {}
    named = {split: [Path(file).relative_to(output_dir).as_posix() for file in files] for split, files in found.items()}
    if unmatched := [name for name in data_files if name not in named.get(SPLIT, [])]:
        problems[f"{CARD} has no configs, and these names do not make the file part of the train split"].extend(
            unmatched)
    for split, files in named.items():
        if split != SPLIT:
            problems[f"{CARD} has no configs, and these names make a {split} split"].extend(files)


def _train_patterns(data_files) -> list[str]:
    """The train split's globs; plain strings (or a list of them) mean train, as in `datasets`."""
    if isinstance(data_files, str):
        return [data_files]
    patterns = []
    for entry in data_files or []:
        if isinstance(entry, str):
            patterns.append(entry)
        elif isinstance(entry, dict) and entry.get("split") == SPLIT:
            path = entry.get("path") or []
            patterns += [path] if isinstance(path, str) else list(path)
    return patterns


def _glob_match(path: str, pattern: str) -> bool:
    """fsspec's glob, as the Hub resolves data_files: `*` and `?` stay within a folder, `**/` spans folders."""
    tokens = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    regex = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.fullmatch("".join(regex.get(token, re.escape(token)) for token in tokens), path) is not None


def _name(places: list[str]) -> str:
    more = len(places) - MAX_NAMED
    return ", ".join(places[:MAX_NAMED]) + (f" and {more:,} more" if more > 0 else "")

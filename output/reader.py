"""Reading a finished output's parquet for the card, the gallery, tuning scores and rating items: only the
columns (and, for picked rows, only the row groups) asked for, so a web-scale output is never loaded whole.

The readers take the chunks themselves (`OutputChunk`s), not a folder: the same code reads a local folder
(`local_chunks`), a pushed Hub dataset (`output_chunks`) or an output on object storage (`OutputStore.chunk`),
the remote ones by byte ranges."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from map_fns.status import OK
from output.layout import CHUNK_GLOB, chunk_files


@dataclass(frozen=True)
class OutputChunk:
    """One chunk of an output, local or remote; remote ones are read by byte ranges, so only the footers,
    columns and row groups asked for are fetched."""

    path: str
    filesystem: object | None = None  # an fsspec filesystem (HfFileSystem, s3fs, ...) for remote chunks

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.filesystem.open(self.path) if self.filesystem else self.path)


def local_chunks(output_dir: Path) -> list[OutputChunk]:
    """The chunks of a local output folder, in output order."""
    return [OutputChunk(str(path)) for path in chunk_files(Path(output_dir))]


def output_chunks(dataset: str) -> list[OutputChunk]:
    """The chunks of a finished output: a local folder, or a Hub dataset repo id it was pushed to."""
    if Path(dataset).expanduser().is_dir():
        return local_chunks(Path(dataset).expanduser())
    from huggingface_hub import HfFileSystem

    hub = HfFileSystem()
    return [OutputChunk(path, hub) for path in sorted(hub.glob(f"datasets/{dataset}/{CHUNK_GLOB}"))]


def read_schema(chunks: Sequence[OutputChunk]) -> pa.Schema:
    """The one schema every chunk shares (read from the first footer); its metadata carries the features."""
    return chunks[0].open().schema_arrow


def count_rows(chunks: Sequence[OutputChunk]) -> int:
    """Rows in the output, from the footers alone."""
    return sum(chunk.open().metadata.num_rows for chunk in chunks)


def iter_batches(chunks: Sequence[OutputChunk], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Every row of `columns`, a batch at a time, chunk after chunk."""
    for chunk in chunks:
        yield from chunk.open().iter_batches(columns=columns)


def read_chosen_rows(chunks: Sequence[OutputChunk], test_columns: list[str], usable: Callable[[pa.Table], list[int]],
                     choose: Callable[[int], Iterable[int]], columns: list[str]) -> list[tuple[int, dict]]:
    """Rows chosen among the usable ones, without loading the output: a first pass reads `test_columns` of
    each row group and counts the rows `usable(table)` returns (their offsets in the group); `choose(n)` gives
    ascending positions among all n usable rows; a second pass reads `test_columns` + `columns` of just the
    row groups holding them. Memory stays bounded by one row group however large the output.

    Returns (row index in the output, row as a dict) pairs, in output order.
    """
    groups = []  # (chunk, row group, index of its first row, usable rows in it), in output order
    first_row = 0
    for chunk in tqdm(chunks, desc="finding rows", unit="file", disable=len(chunks) < 2):
        parquet = chunk.open()
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=test_columns)
            groups.append((chunk, group, first_row, len(usable(table))))
            first_row += table.num_rows
    chosen = iter(choose(sum(count for *_, count in groups)))
    wanted, rows, seen = next(chosen, None), [], 0
    for chunk, group, first_row, count in groups:
        if wanted is not None and wanted < seen + count:
            table = chunk.open().read_row_group(group, columns=list(dict.fromkeys(test_columns + columns)))
            offsets = usable(table)
            while wanted is not None and wanted < seen + count:
                row = offsets[wanted - seen]
                rows.append((first_row + row, table.slice(row, 1).to_pylist()[0]))
                wanted = next(chosen, None)
        seen += count
    return rows


def ok_offsets(table: pa.Table) -> list[int]:
    """Offsets of the rows whose status is ok."""
    return np.flatnonzero(pc.equal(table["status"], OK).to_numpy(zero_copy_only=False)).tolist()


def pick_ok_rows(chunks: Sequence[OutputChunk], count: int, columns: list[str]) -> list[dict]:
    """`count` ok rows spread evenly over the output (always the same ones), with `columns` only."""
    def evenly(total: int) -> list[int]:
        if not total or count <= 0:
            return []
        return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))

    return [{name: row[name] for name in columns}
            for _, row in read_chosen_rows(chunks, ["status"], ok_offsets, evenly, columns)]

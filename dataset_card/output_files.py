"""Reading a finished output's parquet for the card and the gallery: only the columns (and, for picked rows,
only the row groups) asked for, so a web-scale output is never loaded whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from map_fns.status import OK


def data_files(output_dir: Path) -> list[Path]:
    """The output's chunks, in (rank, chunk) order."""
    return sorted((Path(output_dir) / "data").glob("train-*.parquet"))


@dataclass(frozen=True)
class OutputChunk:
    """One chunk of a local output or of a Hub dataset; remote ones are read by byte ranges, so only the
    footers, columns and row groups asked for are fetched."""

    path: str
    filesystem: object | None = None  # an fsspec filesystem (HfFileSystem) for remote chunks

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.filesystem.open(self.path) if self.filesystem else self.path)


def output_chunks(dataset: str) -> list[OutputChunk]:
    """The chunks of a finished output: a local folder, or a Hub dataset repo id it was pushed to."""
    if Path(dataset).expanduser().is_dir():
        return [OutputChunk(str(path)) for path in data_files(Path(dataset).expanduser())]
    from huggingface_hub import HfFileSystem

    hub = HfFileSystem()
    return [OutputChunk(path, hub) for path in sorted(hub.glob(f"datasets/{dataset}/data/train-*.parquet"))]


def read_schema(output_dir: Path) -> pa.Schema:
    """The one schema every chunk shares (read from the first footer); its metadata carries the features."""
    return pq.read_schema(data_files(output_dir)[0])


def count_rows(output_dir: Path) -> int:
    """Rows in the output, from the footers alone."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in data_files(output_dir))


def iter_batches(output_dir: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Every row of `columns`, a batch at a time, file after file."""
    for path in data_files(output_dir):
        yield from pq.ParquetFile(path).iter_batches(columns=columns)


def pick_ok_rows(output_dir: Path, count: int, columns: list[str]) -> list[dict]:
    """`count` ok rows spread evenly over the output (always the same ones), with `columns` only.

    A first pass reads the status column to find them; the second reads just the row groups holding them.
    """
    ok_positions = []  # (file, row group, row within it) of every ok row, in output order
    for path in data_files(output_dir):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            ok = pc.equal(parquet.read_row_group(group, columns=["status"])["status"], OK)
            ok_positions += [(path, group, row) for row in np.flatnonzero(ok.to_numpy(zero_copy_only=False))]
    if not ok_positions or count <= 0:
        return []
    picked = [ok_positions[i] for i in sorted(set(np.linspace(0, len(ok_positions) - 1, count).round().astype(int)))]
    rows = []
    for (path, group), in_group in groupby(picked, key=lambda position: position[:2]):  # one group in memory
        table = pq.ParquetFile(path).read_row_group(group, columns=columns)
        rows += [table.slice(row, 1).to_pylist()[0] for _, _, row in in_group]
    return rows

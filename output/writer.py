"""Parquet output: each process writes its rows, in stream order, as numbered chunks.

A chunk is written to a hidden temp file, synced and renamed into place, so any chunk on disk (`output.layout`)
is complete and valid, whatever happens to the process; only then is the chunk reported (`on_chunk`), which
is when the process's progress record may say it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from output.durable import write_durably
from output.layout import chunk_path, chunk_temp_files, chunks_of_rank, data_dir

ROW_GROUP_TARGET_BYTES = 64 * 2**20  # the Hub viewer wants row groups under 100 MB


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    """zstd, a page index, and row groups sized to stay under the target; temp file, fsync, rename."""
    rows_per_group = max(1, int(table.num_rows * ROW_GROUP_TARGET_BYTES / max(table.nbytes, 1)))
    write_durably(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=rows_per_group,
                                                   write_page_index=True))


def remove_leftovers(output_dir: Path, rank: int, first_chunk: int) -> None:
    """Delete what an interrupted run of this rank left beyond its record: temp files, and chunks from
    `first_chunk` on (renamed into place, but killed before the record said so)."""
    for temp in chunk_temp_files(output_dir, rank):
        temp.unlink()
    for chunk, path in chunks_of_rank(output_dir, rank).items():
        if chunk >= first_chunk:
            path.unlink()


class ChunkWriter:
    """Buffers one process's output rows and writes them as chunks of about `rows_per_chunk` rows.

    Numbering starts at `first_chunk` (the chunks a resumed process already has).
    """

    def __init__(self, output_dir: Path, rank: int, features, rows_per_chunk: int, first_chunk: int = 0,
                 on_chunk: Callable[[pa.Table], None] = lambda table: None):
        self.output_dir, self.rank, self.rows_per_chunk = Path(output_dir), rank, rows_per_chunk
        self.schema = features.arrow_schema
        self.buffer: list[pa.Table] = []
        self.buffered_rows = 0
        self.chunks_written = first_chunk
        self.on_chunk = on_chunk
        data_dir(self.output_dir).mkdir(parents=True, exist_ok=True)

    def add(self, batch: dict[str, list]) -> None:
        """Append a columnar batch (extra internal columns are ignored); write a chunk once `rows_per_chunk`
        rows are buffered.

        A chunk ends with a whole batch, so a resumed run (which starts after its last chunk) forms the same
        model batches as an uninterrupted one: batch shape changes float rounding, and this keeps results
        bit-identical.
        """
        table = pa.Table.from_pydict({name: batch[name] for name in self.schema.names}, schema=self.schema)
        self.buffer.append(table)
        self.buffered_rows += table.num_rows
        if self.buffered_rows >= self.rows_per_chunk:
            self._flush()

    def close(self) -> None:
        if self.buffered_rows:
            self._flush()

    def _flush(self) -> None:
        chunk = pa.concat_tables(self.buffer)
        write_parquet_atomically(chunk, chunk_path(self.output_dir, self.rank, self.chunks_written))
        self.chunks_written += 1
        self.buffer, self.buffered_rows = [], 0
        self.on_chunk(chunk)

"""Parquet output: a task's rows, in stream order, as numbered chunks named by the task.

A chunk appears complete or not at all (`output.store`), so any chunk in the output is valid whatever happens to
its writer; only then is it reported (`on_chunk`), which is when the task's progress record may say it exists.
Chunk CCCCC of task TTTTTT always holds the same rows (a task's rows are fixed, and so are the chunk
boundaries), so a worker resuming a task, or a second worker on the same task, rewrites a chunk with the same
rows under the same name: never a duplicate, never a gap.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from output.layout import chunk_name
from output.store import OutputStore

ROW_GROUP_TARGET_BYTES = 64 * 2**20  # the Hub viewer wants row groups under 100 MB


def write_parquet_chunk(store: OutputStore, name: str, table: pa.Table) -> None:
    """zstd, a page index, and row groups sized to stay under the target."""
    rows_per_group = max(1, int(table.num_rows * ROW_GROUP_TARGET_BYTES / max(table.nbytes, 1)))
    store.write_parquet(name, table, compression="zstd", row_group_size=rows_per_group, write_page_index=True)


class ChunkWriter:
    """Buffers one task's output rows and writes them as chunks of about `rows_per_chunk` rows.

    Numbering starts at `first_chunk` (the chunks a resumed task already has).
    """

    def __init__(self, store: OutputStore, task: int, features, rows_per_chunk: int, first_chunk: int = 0,
                 on_chunk: Callable[[pa.Table], None] = lambda table: None):
        self.store, self.task, self.rows_per_chunk = store, task, rows_per_chunk
        self.schema = features.arrow_schema
        self.buffer: list[pa.Table] = []
        self.buffered_rows = 0
        self.chunks_written = first_chunk
        self.on_chunk = on_chunk

    def add(self, batch: dict[str, list]) -> None:
        """Append a columnar batch (extra internal columns are ignored); write a chunk once `rows_per_chunk`
        rows are buffered.

        A chunk ends with a whole batch, so a resumed task (which starts after its last chunk) forms the same
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
        write_parquet_chunk(self.store, chunk_name(self.task, self.chunks_written), chunk)
        self.chunks_written += 1
        self.buffer, self.buffered_rows = [], 0
        self.on_chunk(chunk)

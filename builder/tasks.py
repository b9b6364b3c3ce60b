"""The source cut into tasks: fixed slices, numbered by a pure function of the source and the task size.

A task is a list of row ranges of parquet files (`Piece`s), made from the files' footers alone: row groups, in
source order, are grouped into tasks of about `--rows_per_task` rows (a row group larger than that is cut into
pieces of exactly that size). Neither the number of workers nor which worker runs a task enters, so the output
(chunks named by task) is the same files with the same rows however many workers made it, and a resumed task
seeks straight to its next row: row groups before it are skipped by the footer's counts, unread.

A source without parquet footers (a Hub dataset stored as JSON, CSV, ...) falls back to one task per shard
(file) `datasets` streams; a resumed fallback task re-reads its own shard up to where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_ROWS_PER_TASK = 20_000
READ_BATCH = 10_000  # rows read at a time inside a row group


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of one parquet file, counted from the file's first row."""

    file: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Task:
    """One unit of work: `pieces` of parquet files, or (fallback) `shard` of the `datasets` stream."""

    index: int
    pieces: tuple[Piece, ...] = ()
    shard: int | None = None

    @property
    def rows(self) -> int | None:
        """Rows in the task; None for a fallback shard (unknown until read)."""
        return None if self.shard is not None else sum(piece.rows for piece in self.pieces)

    def to_dict(self) -> dict:
        return {"index": self.index, "shard": self.shard, "pieces": [asdict(piece) for piece in self.pieces]}

    @staticmethod
    def from_dict(value: dict) -> Task:
        return Task(value["index"], tuple(Piece(**piece) for piece in value["pieces"]), value["shard"])


def plan_from_footers(files: Iterable[tuple[str, list[int]]], rows_per_task: int,
                      max_samples: int | None = None) -> list[Task]:
    """Tasks over `files` ((path, row counts of its row groups), in source order), keeping the first
    `max_samples` rows of the whole source when given."""
    tasks: list[Task] = []
    pieces: list[Piece] = []
    rows = 0
    left = max_samples if max_samples is not None else float("inf")

    def close() -> None:
        nonlocal pieces, rows
        if pieces:
            tasks.append(Task(len(tasks), tuple(pieces)))
        pieces, rows = [], 0

    def add(piece: Piece) -> None:
        nonlocal rows
        if pieces and pieces[-1].file == piece.file and pieces[-1].stop == piece.start:
            pieces[-1] = Piece(piece.file, pieces[-1].start, piece.stop)  # one range, however many row groups
        else:
            pieces.append(piece)
        rows += piece.rows

    for path, group_rows in files:
        start = 0
        for size in group_rows:
            size = int(min(size, left))
            left -= size
            if rows and rows + size > rows_per_task:
                close()
            while size > rows_per_task:  # only ever with an empty task: a row group bigger than a task
                add(Piece(path, start, start + rows_per_task))
                close()
                start, size = start + rows_per_task, size - rows_per_task
            if size:
                add(Piece(path, start, start + size))
                start += size
            if rows >= rows_per_task:
                close()
    close()
    return tasks


def plan_from_shards(num_shards: int) -> list[Task]:
    """The fallback: one task per shard of the `datasets` stream."""
    return [Task(index, shard=index) for index in range(num_shards)]


def row_groups(metadata: pq.FileMetaData) -> tuple[int, ...]:
    """Rows of each row group, from a parquet footer."""
    return tuple(metadata.row_group(group).num_rows for group in range(metadata.num_row_groups))


def open_parquet(file: str) -> pq.ParquetFile:
    """A local path, or a URL any fsspec filesystem serves (`hf://datasets/...`), read by byte ranges."""
    if "://" not in file:
        return pq.ParquetFile(file)
    import fsspec

    return pq.ParquetFile(fsspec.open(file, "rb").open())


def read_pieces(pieces: tuple[Piece, ...], skip: int = 0) -> Iterator[pa.Table]:
    """The rows of `pieces` after the first `skip`, as tables of at most `READ_BATCH` rows. Whole row groups
    before the first wanted row are never read (the footer says how many rows they hold); inside the row group
    that holds it, reading starts at that group."""
    for piece in pieces:
        if skip >= piece.rows:
            skip -= piece.rows
            continue
        start, skip = piece.start + skip, 0
        parquet = open_parquet(piece.file)
        first_row = 0
        for group, size in enumerate(row_groups(parquet.metadata)):
            group_start, first_row = first_row, first_row + size
            if first_row <= start or group_start >= piece.stop:
                continue
            position = group_start
            for batch in parquet.iter_batches(batch_size=READ_BATCH, row_groups=[group]):
                low, high = max(start, position), min(piece.stop, position + batch.num_rows)
                if low < high:
                    yield pa.Table.from_batches([batch.slice(low - position, high - low)])
                position += batch.num_rows
                if position >= piece.stop:
                    break

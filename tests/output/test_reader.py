"""The output readers on chunks held by a non-local fsspec filesystem: right rows, and only the footers, columns
and row groups they need are read (on object storage every byte read is a ranged GET)."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from output.reader import OutputChunk, count_rows, iter_batches, pick_ok_rows, read_schema

CHUNKS, ROWS_PER_CHUNK, ROWS_PER_GROUP = 3, 400, 50
PICTURE_BYTES = 10_000  # random, so they do not compress: the pictures are nearly all of a file
GROUP_PICTURES = ROWS_PER_GROUP * PICTURE_BYTES


class CountingReads:
    """A file of the store that counts the bytes read through it."""

    def __init__(self, file, store: "CountingMemoryFileSystem"):
        self._file, self._store = file, store

    def read(self, size=-1):
        data = self._file.read(size)
        self._store.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)


class CountingMemoryFileSystem(MemoryFileSystem):
    """fsspec's in-memory filesystem, counting what is read from it."""

    protocol = "countingmemory"
    cachable = False  # each test its own count

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_read = 0

    def _open(self, path, mode="rb", **kwargs):
        file = super()._open(path, mode, **kwargs)
        return CountingReads(file, self) if mode == "rb" else file


def stored_row(i: int) -> dict:
    return {"URL": f"http://example.invalid/{i}.jpg", "status": "fetch_error" if i % 4 == 3 else "ok",
            "image": os.urandom(PICTURE_BYTES)}


@pytest.fixture
def remote(tmp_path):
    """(store, rows, chunks): CHUNKS parquet chunks of ROWS_PER_GROUP-row groups on the counting store."""
    store = CountingMemoryFileSystem()
    rows = [stored_row(i) for i in range(CHUNKS * ROWS_PER_CHUNK)]
    chunks = []
    for number in range(CHUNKS):
        path = f"/{tmp_path.name}/data/train-000000-{number:05d}.parquet"
        with store.open(path, "wb") as file:
            part = rows[number * ROWS_PER_CHUNK:(number + 1) * ROWS_PER_CHUNK]
            pq.write_table(pa.Table.from_pylist(part), file, row_group_size=ROWS_PER_GROUP)
        chunks.append(OutputChunk(path, store))
    yield store, rows, chunks
    store.rm(f"/{tmp_path.name}", recursive=True)


def stored_bytes(chunks) -> int:
    return sum(chunk.filesystem.size(chunk.path) for chunk in chunks)


def test_row_count_and_schema_come_from_the_footers_alone(remote):
    store, rows, chunks = remote
    assert count_rows(chunks) == len(rows)
    assert read_schema(chunks).names == ["URL", "status", "image"]
    assert 0 < store.bytes_read < stored_bytes(chunks) / 20


def test_batches_read_only_the_columns_asked_for_in_output_order(remote):
    store, rows, chunks = remote
    statuses = [status for batch in iter_batches(chunks, ["status"]) for status in batch["status"].to_pylist()]
    assert statuses == [row["status"] for row in rows]
    assert store.bytes_read < stored_bytes(chunks) / 20


def test_picked_rows_read_their_pictures_from_their_row_groups_only(remote):
    store, rows, chunks = remote
    picked = pick_ok_rows(chunks, 2, ["URL", "image"])
    ok = [row for row in rows if row["status"] == "ok"]
    assert picked == [{"URL": row["URL"], "image": row["image"]} for row in (ok[0], ok[-1])]  # the ends: spread
    assert 2 * GROUP_PICTURES <= store.bytes_read < 3 * GROUP_PICTURES  # two groups' pictures, footers, statuses

"""The output location: a local folder or any fsspec URL (`s3://bucket/run`, `gs://...`), one interface for both.

Every file the run writes is write-once in spirit: it appears whole or not at all. On a local disk that is a
temp file, fsync and rename (`output.durable`); on an object store a single PUT is already atomic (an object is
visible complete or not at all), and nothing is renamed, since a rename there is a copy and a delete. A file
that must only count once its data is complete (a task's done marker) is written after that data.

Credentials and endpoints come from the filesystem library's own lookup (environment, config files, instance
roles; for s3fs e.g. `AWS_PROFILE`, `AWS_ENDPOINT_URL`, or fsspec's `FSSPEC_S3_*` variables), never from us,
and are never logged.
"""

from __future__ import annotations

import io
import json
import posixpath
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from output.durable import write_durably
from output.reader import OutputChunk


class OutputStore:
    """Files under one root, named by paths relative to it (`data/train-000000-00000.parquet`)."""

    def __init__(self, location: str, storage_options: dict | None = None):
        self.location = str(location)
        self.fs, self.root = fsspec.core.url_to_fs(self.location, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"OutputStore({self.location!r})"

    def path(self, name: str) -> str:
        """The filesystem's path of `name` (for a local store, an absolute path)."""
        return posixpath.join(self.root, name) if name else self.root

    def local_path(self, name: str = "") -> Path:
        """`name` as a local path; only for a local store."""
        assert self.is_local, f"{self.location} is not a local folder"
        return Path(self.path(name))

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache()  # other workers write here: a cached listing (s3fs keeps them) would be stale
        return self.fs.exists(self.path(name))

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def read_json(self, name: str, default=None):
        """The JSON value stored at `name`, or `default` if there is no such file."""
        try:
            return json.loads(self.read_bytes(name))
        except FileNotFoundError:
            return default

    def write_bytes(self, name: str, data: bytes) -> None:
        """`data` at `name`, complete or not at all (see the module docstring)."""
        if self.is_local:
            write_durably(self.local_path(name), lambda tmp: tmp.write_bytes(data))
        else:
            self.fs.pipe_file(self.path(name), data)

    def write_json(self, name: str, value) -> None:
        self.write_bytes(name, json.dumps(value, indent=1).encode())

    def write_parquet(self, name: str, table: pa.Table, **options) -> None:
        """`table` as a parquet file at `name`: streamed to a temp file on a local disk, built in memory and
        sent as one object on a remote store."""
        if self.is_local:
            write_durably(self.local_path(name), lambda tmp: pq.write_table(table, tmp, **options))
        else:
            buffer = io.BytesIO()
            pq.write_table(table, buffer, **options)
            self.fs.pipe_file(self.path(name), buffer.getvalue())

    def upload(self, local: Path, name: str) -> None:
        """Copy a finished local file to `name` (the card, the gallery: rendered locally, then stored)."""
        self.write_bytes(name, Path(local).read_bytes())

    def glob(self, pattern: str) -> list[str]:
        """Names (relative to the root) matching `pattern`, sorted; hidden temp files are never matched by
        patterns that do not start with a dot."""
        prefix = self.root + "/"
        self.fs.invalidate_cache()
        names = (path[len(prefix):] if path.startswith(prefix) else path for path in self.fs.glob(self.path(pattern)))
        hidden_asked = posixpath.basename(pattern).startswith(".")  # fsspec's "*" matches dot-files too
        return sorted(name for name in names if hidden_asked or not posixpath.basename(name).startswith("."))

    def delete(self, name: str) -> None:
        """Remove `name` (a file, or a folder and all under it) if it exists."""
        if self.exists(name):
            self.fs.rm(self.path(name), recursive=True)

    def chunk(self, name: str) -> OutputChunk:
        """`name` as a parquet file the output readers can open (by byte ranges on a remote store)."""
        return OutputChunk(self.path(name), None if self.is_local else self.fs)

"""Blocklists: rows whose URL is listed are never fetched; images whose bytes are listed are dropped on download.

`--blocklist FILE` (repeatable) names a local file, or a Hub file `hf://datasets/ORG/REPO/PATH` (a dataset repo)
or `hf://ORG/REPO/PATH` (a model repo), with an optional `@REVISION` after REPO (`%2F` for a `/` in it, as in
`refs%2Fpr%2F1`), downloaded with huggingface_hub (cached; honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE).

File format: UTF-8 text, one entry per line. Blank lines and lines starting with `#` are skipped, and surrounding
whitespace is stripped (there are no end-of-line comments: `#` is part of a URL). An entry is
- a URL: any line containing `://`; it matches exactly the same string (no normalising: `http://a/x` does not
  match `http://a/x/` nor `https://a/x`);
- an MD5 (32 hex digits) or SHA-256 (64 hex digits) digest, in either case. Published lists mix URL hashes and
  image hashes without saying which, so a digest is checked against both the hash of the URL (of its exact UTF-8
  string, as the source holds it) and the hash of the image's bytes as downloaded.
Any other line (a CSV header, a 40-digit SHA-1, ...) fails the load with an error naming the file and the line.

Memory, the point of the module: a Python set of 10M strings costs about 1 GB in each of a node's processes, so
every entry is kept as a 128-bit key in a sorted numpy array (16 bytes) plus the index of the list it came from
(1 byte, 2 beyond 255 lists), and a batch is looked up with one `np.searchsorted`. A listed URL is kept as its
SHA-256; MD5 digests are 128 bits already; SHA-256 digests (and URLs) are cut to their first 128 bits, so an
unlisted URL or image matches one of N entries by chance with probability about N * 2**-128.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from map_fns.flags import ConfigError
from map_fns.images import one_line

KEY = np.dtype("S16")  # a 128-bit key; numpy compares fixed-width bytes bytewise
HUB_PREFIX = "hf://"
_READ_BYTES = 16 * 2**20  # lines parsed at a time: bounds the load's memory on top of the tables (64 MiB tripled it)
_FORMS = "a URL (containing ://), an MD5 (32 hex digits) or a SHA-256 (64 hex digits)"
_HUB_FORMS = "expected hf://datasets/ORG/REPO[@REVISION]/PATH or hf://ORG/REPO[@REVISION]/PATH"


@dataclass(frozen=True)
class ListInfo:
    """What the dataset card shows of each list."""

    name: str  # the file's name as given: basename for a local path, the hf:// path for a Hub file
    entries: int  # distinct entries
    sha256: str  # of the file's bytes


class _Table:
    """Distinct 128-bit keys, sorted, each with the index of the first list that holds it."""

    def __init__(self, keys: np.ndarray, lists: np.ndarray):
        self.keys, self.lists = keys, lists

    @classmethod
    def build(cls, parts: list[tuple[int, np.ndarray]], list_count: int) -> tuple[_Table, np.ndarray]:
        """From each list's keys, in list order: the table, and how many distinct keys each list holds."""
        keys = np.concatenate([keys for _, keys in parts] or [np.empty(0, KEY)])
        lists = np.concatenate([np.full(len(keys), index, np.min_scalar_type(list_count)) for index, keys in parts]
                               or [np.empty(0, np.uint8)])
        order = np.argsort(keys, kind="stable")  # equal keys stay in list order: the first list's comes first
        keys, lists = keys[order], lists[order]
        new_key = np.ones(len(keys), bool)
        new_key[1:] = keys[1:] != keys[:-1]
        new_in_list = new_key.copy()
        new_in_list[1:] |= lists[1:] != lists[:-1]
        return cls(keys[new_key], lists[new_key]), np.bincount(lists[new_in_list], minlength=list_count)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Each key's list index, -1 where the table lacks it."""
        if not len(self.keys):
            return np.full(len(keys), -1)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.lists[at].astype(np.intp), -1)


def _keys(digests: Sequence[bytes]) -> np.ndarray:
    """Digests (16 bytes or more) as keys: their first 128 bits."""
    return np.frombuffer(b"".join(digest[:16] for digest in digests), KEY)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Blocklist:
    """The entries of every `--blocklist` file, looked up by URL (before fetching) and by image bytes."""

    def __init__(self, sources: tuple[str, ...], lists: tuple[ListInfo, ...], urls: _Table, sha256: _Table,
                 md5: _Table):
        self.sources, self.lists = sources, lists
        self._urls, self._sha256, self._md5 = urls, sha256, md5

    @classmethod
    def load(cls, sources: Sequence[str]) -> Blocklist:
        """Read every list; `ConfigError` (one line naming the source) for a file that cannot be had or read."""
        sources = tuple(sources)
        names, sha256s, parts = [], [], {"url": [], "sha256": [], "md5": []}
        for index, source in enumerate(sources):
            name, path = _locate(source)
            sha256, keys = _read_list(path, source)
            names.append(name)
            sha256s.append(sha256)
            for kind, kind_keys in keys.items():
                parts[kind].append((index, kind_keys))
        tables, entries = {}, np.zeros(len(sources), np.int64)
        for kind, kind_parts in parts.items():
            tables[kind], counts = _Table.build(kind_parts, len(sources))
            entries += counts
        lists = tuple(ListInfo(name, int(count), sha256) for name, count, sha256 in zip(names, entries, sha256s))
        return cls(sources, lists, tables["url"], tables["sha256"], tables["md5"])

    def __bool__(self) -> bool:
        return bool(len(self._urls) or len(self._sha256) or len(self._md5))

    def url_reasons(self, urls: Sequence[str | None]) -> list[str | None]:
        """Per URL: None, or why it must not be fetched ("URL listed in urls.txt"); None for a missing URL."""
        reasons: list[str | None] = [None] * len(urls)
        rows = [row for row, url in enumerate(urls) if isinstance(url, str)] if self else []
        encoded = [urls[row].encode("utf-8", "surrogatepass") for row in rows]
        checks = ((self._urls, _sha256, "URL"), (self._sha256, _sha256, "URL's SHA-256"),
                  (self._md5, _md5, "URL's MD5"))  # in order of precedence: the first reason found is given
        digests: dict[Callable, np.ndarray] = {}
        for table, digest, what in checks:
            if not len(table) or not rows:
                continue
            if digest not in digests:
                digests[digest] = _keys([digest(url) for url in encoded])
            found = table.find(digests[digest])
            for at in np.flatnonzero(found >= 0):
                reasons[rows[at]] = reasons[rows[at]] or f"{what} listed in {self.lists[found[at]].name}"
        return reasons

    def content_reason(self, data: bytes) -> str | None:
        """None, or why the downloaded image must be dropped ("image SHA-256 listed in hashes.txt")."""
        for table, digest, what in ((self._sha256, _sha256, "SHA-256"), (self._md5, _md5, "MD5")):
            if len(table):
                found = table.find(_keys([digest(data)]))[0]
                if found >= 0:
                    return f"image {what} listed in {self.lists[found].name}"
        return None

    def __reduce__(self):
        """Pickled as its sources and their checksums, not its tables: `datasets` pickles map functions to
        fingerprint them, and a process that unpickles one reloads the lists (checked unchanged)."""
        return _reload, (self.sources, tuple(info.sha256 for info in self.lists))


@functools.lru_cache(maxsize=1)
def shared_blocklist(sources: tuple[str, ...]) -> Blocklist:
    """The process's `Blocklist` of these sources, loaded once: the check before any work, the fetch stage and the
    card all use it, so tens of millions of entries are read once per process, and a bad list fails up front."""
    return Blocklist.load(sources)


def _reload(sources: tuple[str, ...], sha256s: tuple[str, ...]) -> Blocklist:
    blocklist = Blocklist.load(sources)
    for source, was, info in zip(sources, sha256s, blocklist.lists):
        if info.sha256 != was:
            raise ConfigError(f"--blocklist {source} changed since it was loaded (sha256 {was}, now {info.sha256})")
    return blocklist


def _locate(source: str) -> tuple[str, Path]:
    """The list's name for reasons and the card, and where its file is on this machine."""
    if source.startswith(HUB_PREFIX):
        return source, _download(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--blocklist {source}: no such file")
    return path.name, path


def _download(source: str) -> Path:
    """A Hub file, fetched into (or, offline, found in) huggingface_hub's cache. The client is imported here: a
    run with local lists only never loads it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError,
        RevisionNotFoundError)

    rest, repo_type = source.removeprefix(HUB_PREFIX), "model"
    if rest.startswith("datasets/"):
        rest, repo_type = rest.removeprefix("datasets/"), "dataset"
    org, repo, filename = (rest.split("/", 2) + ["", ""])[:3]
    repo, _, revision = repo.partition("@")
    if not (org and repo and filename):
        raise ConfigError(f"--blocklist {source}: {_HUB_FORMS}")
    try:
        return Path(hf_hub_download(f"{org}/{repo}", filename, repo_type=repo_type, revision=unquote(revision) or None))
    except GatedRepoError:
        problem = "the repo is gated: accept its terms on the Hub, then log in (HF_TOKEN or `hf auth login`)"
    except RepositoryNotFoundError:
        problem = f"the Hub has no {repo_type} repo {org}/{repo} (a private one needs HF_TOKEN)"
    except RevisionNotFoundError:
        problem = f"{org}/{repo} has no revision {unquote(revision)!r}"
    except EntryNotFoundError as err:  # the Hub's 404 for the file, or offline/unreachable and not in the cache
        problem = f"{org}/{repo} has no file {filename}" if isinstance(err, HfHubHTTPError) else \
            f"not in the local cache, and the Hub cannot be reached ({one_line(err)})"
    except (HfHubHTTPError, HFValidationError, OSError) as err:
        problem = one_line(err)
    raise ConfigError(f"--blocklist {source}: cannot download: {problem}")


def _read_list(path: Path, source: str) -> tuple[str, dict[str, np.ndarray]]:
    """The file's SHA-256 and its keys by kind ("url", "sha256", "md5"), parsed a chunk of lines at a time."""
    checksum, parts = hashlib.sha256(), {"url": [], "sha256": [], "md5": []}
    try:
        for first_number, lines in _line_chunks(path):
            checksum.update(b"".join(lines))
            if first_number == 1:
                lines[0] = lines[0].removeprefix(codecs.BOM_UTF8)
            for kind, keys in _parse(lines, first_number, source).items():
                parts[kind].append(keys)
    except OSError as err:
        raise ConfigError(f"--blocklist {source}: cannot read ({err.strerror or one_line(err)})") from None
    return checksum.hexdigest(), {kind: np.concatenate(keys or [np.empty(0, KEY)]) for kind, keys in parts.items()}


def _line_chunks(path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """The file's lines, about `_READ_BYTES` at a time, each chunk with its first line's number (from 1)."""
    number = 1
    with open(path, "rb") as file:
        while lines := file.readlines(_READ_BYTES):
            yield number, lines
            number += len(lines)


def _parse(lines: list[bytes], first_number: int, source: str) -> dict[str, np.ndarray]:
    """One chunk's entries as keys by kind. The per-line work is the least that sorts a line into its form; the
    hex and UTF-8 checks run over the whole chunk at once, and only when one fails are the lines checked one by one
    to name the bad line."""
    urls, md5s, sha256s = [], [], []
    for number, line in enumerate(lines, first_number):
        entry = line.strip()
        if not entry or entry.startswith(b"#"):
            continue
        if b"://" in entry:
            urls.append(entry)
        elif len(entry) == 32:
            md5s.append(entry)
        elif len(entry) == 64:
            sha256s.append(entry)
        else:
            raise _bad_line(source, number, entry, f"is not {_FORMS}")
    try:
        b"\n".join(urls).decode("utf-8")
        md5_keys = np.frombuffer(binascii.unhexlify(b"".join(md5s)), KEY)
        sha256_digests = np.frombuffer(binascii.unhexlify(b"".join(sha256s)), np.uint8).reshape(-1, 32)
    except (UnicodeDecodeError, binascii.Error):
        _raise_first_bad_line(lines, first_number, source)
        raise
    return {"url": _keys([_sha256(url) for url in urls]), "md5": md5_keys,
            "sha256": np.ascontiguousarray(sha256_digests[:, :16]).view(KEY).ravel()}


def _raise_first_bad_line(lines: list[bytes], first_number: int, source: str) -> None:
    """The slow path, taken only when a chunk's joint check failed: find the line and name it."""
    for number, line in enumerate(lines, first_number):
        entry = line.strip()
        if b"://" in entry:
            try:
                entry.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad_line(source, number, entry, "is not UTF-8 text") from None
        elif entry and not entry.startswith(b"#"):
            try:
                binascii.unhexlify(entry)
            except binascii.Error:
                raise _bad_line(source, number, entry, f"is not {_FORMS}") from None


def _bad_line(source: str, number: int, entry: bytes, problem: str) -> ConfigError:
    shown = entry.decode("utf-8", "replace")
    shown = shown[:80] + "..." if len(shown) > 80 else shown
    return ConfigError(f"--blocklist {source} line {number}: {shown!r} {problem}")

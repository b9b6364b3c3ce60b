"""Fetch stage: get each row's image (its image cell's bytes, else the cell's path, else its URL) and decode
it once, at the size the models need.

Before any request a row is screened: a URL on a `--blocklist` makes it `blocked_by_list`, a failed score
filter on its source columns (`--filter`, `--max_punsafe`, `--max_pwatermark`) `filtered`; neither is fetched.
Image bytes whose hash is on a blocklist are dropped once they are had (a download: by the downloader, before it
keeps the body; embedded bytes or a local file: before decoding), so they are never decoded, stored or shown.

Downloads go through `http_client.Downloader` (aiohttp on its own event loop: many concurrent requests,
deadlines, retries, redirects checked against the address policy, opt-outs honoured, one request per URL);
local files (a local source's own) are read and images decoded on a small thread pool, since Pillow releases
the GIL while it decodes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from map_fns.blocklist import Blocklist, shared_blocklist
from map_fns.flags import above, at_least, require
from map_fns.images import DecodedImage, ImageDecodeError, decode_for_models, one_line
from map_fns.net_policy import parse_networks
from map_fns.row_filters import RowFilter, filter_reasons, row_filters
from map_fns.stage import Column, Stage, StageContext
from map_fns.status import BLOCKED_BY_LIST, DECODE_ERROR, FETCH_ERROR, FILTERED, INVALID_URL, OK

Outcome = tuple[str, str | None, DecodedImage | None]  # a row's (status, error, decoded image)


@dataclass
class FetchConfig:
    """Fetch stage settings; `transformers.HfArgumentParser` turns each field into a `--<name>` flag."""

    fetch_timeout: float = field(default=10.0, metadata={"help": "Seconds to wait to connect and for each read."})
    fetch_deadline: float = field(
        default=30.0, metadata={"help": "Seconds one image may take in all: redirects, retries and slow bodies."}
    )
    fetch_retries: int = field(default=2, metadata={"help": "Retries after a timeout, HTTP 5xx or 429."})
    fetch_backoff: float = field(default=0.5, metadata={"help": "First retry delay in seconds, doubled each time."})
    max_redirects: int = field(default=5, metadata={"help": "Redirects followed per image."})
    fetch_concurrency: int = field(default=64, metadata={"help": "Downloads in flight per process."})
    decode_threads: int = field(default=os.cpu_count() or 2, metadata={"help": "Threads decoding images."})
    max_image_bytes: int = field(default=32 * 2**20, metadata={"help": "Larger response bodies are a fetch error."})
    max_image_pixels: int = field(
        default=89_478_485,  # Pillow's own decompression bomb limit
        metadata={"help": "Images with more pixels (read from the header) are a decode error."},
    )
    max_image_decoded_bytes: int = field(
        # At the default --resize_min_side: RGB PNGs up to ~38 Mpx and RGBA ones up to ~27 Mpx (4:3; 46 Mpx
        # square), greyscale and palette ones up to the pixel cap, baseline JPEGs of any size under it (decoded at a
        # reduced DCT scale), progressive ones up to ~72 Mpx (coefficients) and WebPs up to ~13 Mpx (19 bytes a pixel).
        default=256 * 2**20,
        metadata={"help": "Images whose decode would need more memory, in bytes (pixels after JPEG scaling, the "
                          "decoder's buffers, RGB copies; estimated from the header), are a decode error."},
    )
    resize_min_side: int = field(
        # A multiple of each CLIP input size the recipes use (ViT-L/14 224, ViT-L/14-336 336, RN50x64 448), so that
        # their resize and centre crop cut the same picture as from the source (`images._scaled_to`), and 3x the
        # largest: on photographs at 3000 px each model's processor makes of the decode what it makes of the full
        # image to 0.0013-0.0020 mean (normalised units; 0.0033 with pixel grain), vs 0.013-0.025 from the old
        # 448 px bilinear decode; 896 leaves 0.0018-0.0035, and 0.005 for ViT-L/14-336 (bench/model_inputs.py).
        default=1344,
        metadata={"help": "Big images are decoded at reduced scale and downscaled (bicubic) to this shorter side; "
                          "keep it a multiple of each CLIP ranker's input size, 3x the largest (0: full size)."},
    )
    user_agent: str = field(default="laion-coco-builder/0.1", metadata={"help": "User-Agent header sent."})
    allow_networks: str = field(
        default="",
        metadata={"help": "Comma-separated CIDRs fetched from although not public (e.g. a private mirror)."},
    )
    respect_optouts: bool = field(
        default=True, metadata={"help": "Skip images whose server sends X-Robots-Tag noai/noimageai/noindex."}
    )
    recent_downloads_bytes: int = field(
        default=64 * 2**20,  # ~600 LAION-sized bodies (~100 KiB: ten batches of 64), or ~150,000 failures
        metadata={"help": "Memory per process for the outcomes (bodies, errors) of the latest downloads: a URL "
                          "seen again within it is not requested again (0: only rows fetched together share)."},
    )

    blocklist: list[str] = field(
        default_factory=list,
        metadata={"help": "File of URLs, URL hashes or image hashes (SHA-256/MD5 hex), one a line, never fetched or "
                          "stored: a local path or hf://datasets/ORG/REPO/PATH; repeatable.", "action": "extend"},
    )
    filter: list[str] = field(
        default_factory=list,
        metadata={"help": "Keep only rows whose source column holds, e.g. 'punsafe<=0.5' (OP: <=, <, >=, >, ==, "
                          "!=); others are not fetched (status filtered); repeatable.", "action": "extend"},
    )
    max_punsafe: float | None = field(
        default=None, metadata={"help": "Rows whose source punsafe is above this are not fetched (filtered)."}
    )
    max_pwatermark: float | None = field(
        default=None, metadata={"help": "Rows whose source pwatermark is above this are not fetched (filtered)."}
    )

    def __post_init__(self):
        # A list given twice (a saved config reused with the same flags) counts once.
        self.blocklist, self.filter = list(dict.fromkeys(self.blocklist)), list(dict.fromkeys(self.filter))
        self.row_filters()  # a malformed --filter fails here, in one line
        for name in ("fetch_timeout", "fetch_deadline"):
            above(self, name, 0)
        for name, low in (("fetch_retries", 0), ("fetch_backoff", 0), ("max_redirects", 0), ("resize_min_side", 0),
                          ("fetch_concurrency", 1), ("decode_threads", 1), ("max_image_bytes", 1),
                          ("max_image_pixels", 1), ("max_image_decoded_bytes", 1), ("recent_downloads_bytes", 0)):
            at_least(self, name, low)
        single_line = self.user_agent.strip() and "\r" not in self.user_agent and "\n" not in self.user_agent
        require(self, "user_agent", bool(single_line), "be a non-empty single line")
        parse_networks(self.allow_networks)

    def row_filters(self) -> list[RowFilter]:
        return row_filters(self.filter, self.max_punsafe, self.max_pwatermark)


def image_source(url: str | None, image) -> tuple[bytes | None, str | None]:
    """Where a row's image comes from: (its `image` cell's bytes, else None) and (None, else the address to get
    it from: the cell's path when it has one, else the row's `url`).

    A cell is what `datasets.Image(decode=False)` gives, {"bytes": bytes | None, "path": str | None}, or raw
    bytes from a binary column; empty or None when the row has none. A cell that is neither holds no image
    (the fetch stage makes the row a decode_error).
    """
    try:
        data, path = _cell(image)
    except ValueError:
        return None, url
    return (data, None) if data else (None, path or url)


def _cell(image) -> tuple[bytes | None, str | None]:
    """An image cell's (bytes, path), each None when missing or empty; `ValueError` if it is not a cell."""
    data, path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
    if not isinstance(data, (bytes, bytearray, memoryview, type(None))) or not isinstance(path, (str, type(None))):
        kind = f"{{bytes: {type(data).__name__}, path: {type(path).__name__}}}" if isinstance(image, dict) else \
            type(image).__name__
        raise ValueError(f"image cell is {kind}, not bytes or {{bytes, path}}")
    return (bytes(data) if data else None), (path or None)


@dataclass(frozen=True)
class LocalFile:
    """An image cell's path on this machine, read in a decode thread."""

    path: str

    def read(self, max_bytes: int) -> bytes:
        """The file's bytes; `OSError` with a one-line message for anything but a regular file of at most
        `max_bytes` (a FIFO, /dev/zero or a directory would block, never end, or mean nothing)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)  # a FIFO: no waiting
            try:
                regular, data = stat.S_ISREG(os.fstat(fd).st_mode), b""
                if regular:
                    with open(fd, "rb", closefd=False) as file:
                        data = file.read(max_bytes + 1)  # whatever size it had: no more than this
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(f"cannot read local file {_shown(self.path)}: {e.strerror or one_line(e)}") from None
        if not regular:
            raise OSError(f"local file {_shown(self.path)} is not a regular file")
        if len(data) > max_bytes:
            raise OSError(f"local file {_shown(self.path)} is larger than {max_bytes} bytes")
        return data


def _shown(text: str, keep: int = 60) -> str:
    """`text` quoted on one line (escapes shown), its middle cut out if long: paths can be."""
    return repr(text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep:]}")


class Decoder:
    """Reads local files and decodes images on a thread pool (Pillow releases the GIL while decoding), one
    (status, error, DecodedImage) per item.

    It pickles as its settings: `datasets` pickles map functions to fingerprint them, and a pool cannot be.
    """

    def __init__(self, threads: int, max_pixels: int, max_decoded_bytes: int, min_side: int | None,
                 max_file_bytes: int, blocklist: Blocklist):
        self.threads, self.max_pixels, self.min_side = threads, max_pixels, min_side
        self.max_decoded_bytes, self.max_file_bytes, self.blocklist = max_decoded_bytes, max_file_bytes, blocklist
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def __reduce__(self):
        return Decoder, (self.threads, self.max_pixels, self.max_decoded_bytes, self.min_side, self.max_file_bytes,
                         self.blocklist)

    def decode_all(self, items: list[bytes | LocalFile], screened: list[bool]) -> list[Outcome]:
        """Each item decoded; the bytes of those not `screened` yet (downloads are, by the downloader) are first
        looked up in the blocklist, and a listed image's bytes are dropped undecoded."""
        return list(self.pool.map(self._decode, items, screened))

    def _decode(self, item: bytes | LocalFile, screened: bool) -> Outcome:
        try:
            data = item.read(self.max_file_bytes) if isinstance(item, LocalFile) else item
        except OSError as e:
            return FETCH_ERROR, one_line(e), None
        listed = None if screened or not self.blocklist else self.blocklist.content_reason(data)
        if listed:
            return BLOCKED_BY_LIST, listed, None
        try:
            return OK, None, decode_for_models(data, self.max_pixels, self.min_side, self.max_decoded_bytes)
        except ImageDecodeError as e:
            return DECODE_ERROR, e.reason, None
        except Exception as e:  # e.g. MemoryError: a row never raises out of the stage
            return DECODE_ERROR, one_line(e), None


def _row_source(url, image, read_local_files: bool) -> bytes | str | None | LocalFile | Outcome:
    """What a row needs: these bytes decoded, this URL (str or None) downloaded, this local file read; or its
    outcome already, when its image cannot be had."""
    try:
        data, path = _cell(image)
    except ValueError as e:
        return DECODE_ERROR, str(e), None
    if data:
        return data
    if path is None:
        if url is not None and not isinstance(url, str):
            return INVALID_URL, f"URL must be a string, got {type(url).__name__}", None
        return url
    scheme = urlsplit(path).scheme.lower()  # as `datasets` tells a local path from a URL
    if scheme in ("http", "https"):
        return path
    if scheme:
        return INVALID_URL, f"image path {_shown(path)} has unsupported scheme {scheme!r}", None
    if not read_local_files:
        return INVALID_URL, (f"image path {_shown(path)} is a local file; local files are read only for a local "
                             "source"), None
    return LocalFile(path)


def _kept_out(blocklist: Blocklist, filters: list[RowFilter], batch: dict[str, list]) -> list[Outcome | None]:
    """Per row, the outcome of a row kept out before any request (a listed URL, then a failed score filter), or
    None. The URL looked up is the row's `URL`, and also its image cell's http(s) path when it has one."""
    listed = blocklist.url_reasons([url if isinstance(url, str) else None for url in batch["URL"]])
    if blocklist and "image" in batch:
        by_path = blocklist.url_reasons([_cell_url(image) for image in batch["image"]])
        listed = [by_url or path_listed for by_url, path_listed in zip(listed, by_path)]
    failed = filter_reasons(filters, batch)
    return [(BLOCKED_BY_LIST, reason, None) if reason else (FILTERED, failure, None) if failure else None
            for reason, failure in zip(listed, failed)]


def _cell_url(image) -> str | None:
    """The http(s) path of an image cell without bytes (what would be requested for it), else None."""
    try:
        data, path = _cell(image)
    except ValueError:
        return None
    return path if not data and path and urlsplit(path).scheme.lower() in ("http", "https") else None


def make_fetch_fn(
    cfg: FetchConfig, device=None, *, read_local_files: bool = False
) -> Callable[[dict[str, list]], dict[str, list]]:
    """Build the batched fetch function (`device` is unused: nothing here runs on an accelerator).

    It reads `URL` and the optional `image` column and returns `status`, `error`, `image_width`,
    `image_height` (the source image's upright size) and `_image` (RGB `PIL.Image`, internal); see
    `image_source` for which a row's image is. An image cell's local file path is read only with
    `read_local_files` (a local source's own files): else a dataset could have this machine's files read
    and published. It owns an event loop thread and a thread pool, so call the factory in each process.
    """
    from map_fns.http_client import Downloader
    from map_fns.net_policy import AddressPolicy

    blocklist = shared_blocklist(tuple(cfg.blocklist))
    filters = cfg.row_filters()
    downloader = Downloader(
        timeout=cfg.fetch_timeout, deadline=cfg.fetch_deadline, max_bytes=cfg.max_image_bytes,
        max_redirects=cfg.max_redirects, retries=cfg.fetch_retries, backoff=cfg.fetch_backoff,
        user_agent=cfg.user_agent, concurrency=cfg.fetch_concurrency,
        policy=AddressPolicy(parse_networks(cfg.allow_networks)), respect_optouts=cfg.respect_optouts,
        recent_bytes=cfg.recent_downloads_bytes, blocklist=blocklist,
    )
    decoder = Decoder(cfg.decode_threads, cfg.max_image_pixels, cfg.max_image_decoded_bytes,
                      cfg.resize_min_side or None, cfg.max_image_bytes, blocklist)

    def fetch_fn(batch: dict[str, list]) -> dict[str, list]:
        urls = batch["URL"]
        images = batch.get("image") or [None] * len(urls)
        kept_out = _kept_out(blocklist, filters, batch)
        sources = [out or _row_source(url, image, read_local_files) for out, url, image in zip(kept_out, urls, images)]
        distinct = list(dict.fromkeys(sources))  # rows with the same source share one fetch and one decode
        outcomes: dict = {source: source for source in distinct if isinstance(source, tuple)}
        remote = [source for source in distinct if source is None or isinstance(source, str)]
        bodies = {}
        for source, download in zip(remote, downloader.fetch_all(remote)):
            if download.status == OK:
                bodies[source] = download.body
            else:
                outcomes[source] = download.status, download.error, None
        to_decode = [source for source in distinct if source not in outcomes]
        outcomes.update(zip(to_decode, decoder.decode_all([bodies.get(source, source) for source in to_decode],
                                                          [source in bodies for source in to_decode])))
        rows = [outcomes[source] for source in sources]
        decoded = [image for _, _, image in rows]
        return {
            "status": [status for status, _, _ in rows],
            "error": [error for _, error, _ in rows],
            "image_width": [d.width if d else None for d in decoded],
            "image_height": [d.height if d else None for d in decoded],
            "_image": [d.image if d else None for d in decoded],
        }

    return fetch_fn


def _load(cfg: FetchConfig, context: StageContext) -> Callable[[dict[str, list]], dict[str, list]]:
    return make_fetch_fn(cfg, read_local_files=context.read_local_files)


STAGE = Stage("fetch", FetchConfig, _load, reads=("URL",),
              writes=(Column("status", "string"), Column("error", "string"), Column("image_width", "int32"),
                      Column("image_height", "int32"), Column("_image")),
              recipe=False, reuse=False, run_ahead=True)

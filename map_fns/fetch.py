"""Fetch stage: get each row's image (embedded bytes, else download its URL) and decode it once, at the
size the models need.

Downloads go through `http_client.Downloader` (aiohttp on its own event loop: many concurrent requests,
deadlines, retries, redirects checked against the address policy, opt-outs honoured); decoding runs on a
small thread pool, since Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from map_fns.images import ImageDecodeError, decode_for_models, one_line
from map_fns.net_policy import parse_networks
from map_fns.status import DECODE_ERROR, OK


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
        # Decodes an 8000x8000 RGBA PNG (~260 MB), a baseline JPEG of any size under the pixel cap (decoded at 1/8
        # scale, a few MB), a progressive 4:2:0 one up to ~85 Mpx (3 bytes a pixel) and a WebP up to ~14 Mpx (19).
        default=256 * 2**20,
        metadata={"help": "Images whose decode would need more memory, in bytes (pixels after JPEG scaling, the "
                          "decoder's buffers, RGB copies; estimated from the header), are a decode error."},
    )
    resize_min_side: int = field(
        default=448,  # the largest model input: RN50x64 (BLIP-large takes 384, ViT-L/14 224)
        metadata={"help": "Decode and downscale so the shorter side is this (0: keep full size)."},
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
        default=128 * 2**20,  # ~1,000 LAION-sized bodies (~100 kB), or ~250,000 failures
        metadata={"help": "Memory per process for the outcomes (bodies, errors) of the latest downloads: a URL "
                          "seen again within it is not requested again (0: only rows fetched together share)."},
    )

    def __post_init__(self):
        for name in ("fetch_timeout", "fetch_deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name, low in (("fetch_retries", 0), ("fetch_backoff", 0), ("max_redirects", 0), ("resize_min_side", 0),
                          ("fetch_concurrency", 1), ("decode_threads", 1), ("max_image_bytes", 1),
                          ("max_image_pixels", 1), ("max_image_decoded_bytes", 1), ("recent_downloads_bytes", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name} must be >= {low}, got {getattr(self, name)}")
        if not self.user_agent.strip() or "\r" in self.user_agent or "\n" in self.user_agent:
            raise ValueError(f"--user_agent must be a non-empty single line, got {self.user_agent!r}")
        parse_networks(self.allow_networks)


def embedded_bytes(image) -> bytes | None:
    """The bytes of a source `image` cell: raw bytes or `datasets.Image(decode=False)`'s {"bytes", "path"}."""
    data = image.get("bytes") if isinstance(image, dict) else image
    return data or None


class Decoder:
    """Decodes bodies on a thread pool (Pillow releases the GIL while decoding), one status per body.

    It pickles as its settings: `datasets` pickles map functions to fingerprint them, and a pool cannot be.
    """

    def __init__(self, threads: int, max_pixels: int, max_decoded_bytes: int, min_side: int | None):
        self.threads, self.max_pixels, self.min_side = threads, max_pixels, min_side
        self.max_decoded_bytes = max_decoded_bytes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def __reduce__(self):
        return Decoder, (self.threads, self.max_pixels, self.max_decoded_bytes, self.min_side)

    def decode_all(self, bodies: list[bytes]) -> list[tuple]:
        return list(self.pool.map(self._decode, bodies))

    def _decode(self, data: bytes) -> tuple:
        try:
            return OK, None, decode_for_models(data, self.max_pixels, self.min_side, self.max_decoded_bytes)
        except ImageDecodeError as e:
            return DECODE_ERROR, e.reason, None
        except Exception as e:  # e.g. MemoryError: a row never raises out of the stage
            return DECODE_ERROR, one_line(e), None


def make_fetch_fn(cfg: FetchConfig, device=None) -> Callable[[dict[str, list]], dict[str, list]]:
    """Build the batched fetch function (`device` is unused: nothing here runs on an accelerator).

    It reads `URL` and the optional `image` column and returns `status`, `error`, `image_width`,
    `image_height` (the source image's upright size) and `_image` (RGB `PIL.Image`, internal).
    It owns an event loop thread and a thread pool, so call the factory in each process.
    """
    from map_fns.http_client import Downloader
    from map_fns.net_policy import AddressPolicy

    downloader = Downloader(
        timeout=cfg.fetch_timeout, deadline=cfg.fetch_deadline, max_bytes=cfg.max_image_bytes,
        max_redirects=cfg.max_redirects, retries=cfg.fetch_retries, backoff=cfg.fetch_backoff,
        user_agent=cfg.user_agent, concurrency=cfg.fetch_concurrency,
        policy=AddressPolicy(parse_networks(cfg.allow_networks)), respect_optouts=cfg.respect_optouts,
        recent_bytes=cfg.recent_downloads_bytes,
    )
    decoder = Decoder(cfg.decode_threads, cfg.max_image_pixels, cfg.max_image_decoded_bytes, cfg.resize_min_side or None)

    def fetch_fn(batch: dict[str, list]) -> dict[str, list]:
        urls = batch["URL"]
        bodies = [embedded_bytes(image) for image in batch.get("image") or [None] * len(urls)]
        results: list = [None] * len(urls)
        to_download = [i for i, body in enumerate(bodies) if body is None]
        for i, download in zip(to_download, downloader.fetch_all([urls[i] for i in to_download])):
            if download.status == OK:
                bodies[i] = download.body
            else:
                results[i] = (download.status, download.error, None)
        to_decode = [i for i in range(len(urls)) if results[i] is None]
        for i, result in zip(to_decode, decoder.decode_all([bodies[i] for i in to_decode])):
            results[i] = result
        decoded = [result[2] for result in results]
        return {
            "status": [status for status, _, _ in results],
            "error": [error for _, error, _ in results],
            "image_width": [d.width if d else None for d in decoded],
            "image_height": [d.height if d else None for d in decoded],
            "_image": [d.image if d else None for d in decoded],
        }

    return fetch_fn

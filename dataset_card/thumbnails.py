"""Small inline JPEG thumbnails of the gallery's rows, decoded by the project's own fetch stage.

The fetch stage takes the embedded bytes of the `image` column when a row has them and downloads the URL
otherwise, with the run's own fetch settings (timeouts, address policy, opt-outs), so the gallery fetches
exactly as the run did, and only its few rows.
"""

from __future__ import annotations

import base64
import dataclasses
import io

from PIL import Image

from map_fns.fetch import FetchConfig, make_fetch_fn
from map_fns.status import OK

THUMBNAIL_SIDE = 256  # longest side, in pixels
JPEG_QUALITY = 80


def data_uri(image: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """`image` shrunk to fit `side` x `side` pixels, as a base64 JPEG data URI."""
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(urls: list[str | None], images: list | None, fetch: FetchConfig, side: int = THUMBNAIL_SIDE,
               read_local_files: bool = False) -> list[tuple[str | None, str | None]]:
    """(data URI or None, why not) per row; `images` is the rows' `image` cells (None: the output has none),
    `fetch` the run's fetch settings, `side` the longest side of a thumbnail in pixels;
    `read_local_files` as for `make_fetch_fn` (only for an output of a local source)."""
    if not urls:
        return []
    batch = {"URL": urls, **({"image": images} if images is not None else {})}
    # The rows passed the score filters when they were made (their source columns are not at hand here); the
    # blocklist still applies: a listed image the server now sends in their place is dropped, not shown.
    unfiltered = dataclasses.replace(fetch, filter=[], max_punsafe=None, max_pwatermark=None)
    fetched = make_fetch_fn(unfiltered, read_local_files=read_local_files)(batch)
    return [(data_uri(image, side), None) if status == OK else (None, f"{status}: {error}")
            for status, error, image in zip(fetched["status"], fetched["error"], fetched["_image"], strict=True)]

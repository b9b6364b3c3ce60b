"""Row statuses shared by every stage: errors are data, not exceptions.

Only rows whose status is `OK` are worked on; every later stage passes the others through untouched.
Columns whose names start with `_` are internal hand-offs between stages and are never written out.
"""

OK = "ok"
FETCH_ERROR = "fetch_error"  # network failure, timeout, HTTP error status, body too large
DECODE_ERROR = "decode_error"  # body is not a decodable image (corrupt, truncated, bomb, not an image)
INVALID_URL = "invalid_url"  # empty, malformed or non-http(s) URL
BLOCKED = "blocked"  # the host resolves to an address we never fetch from (loopback, private, link-local, ...)
OPTED_OUT = "opted_out"  # the server asked, with X-Robots-Tag, that the image not be used for AI
NO_CAPTION = "no_caption"  # the captioner produced no non-empty candidate, or its processor refused the image
BLOCKED_BY_LIST = "blocked_by_list"  # its URL, or its image bytes' hash, is on a --blocklist
FILTERED = "filtered"  # a score filter kept it out: a source column (--filter, --max_punsafe, ...), --max_punsafe_pred

# Rows whose image must never be stored or shown: their source image cell is emptied as soon as a stage sets one
# of these, and they are never captioned.
WITHHELD = frozenset({BLOCKED_BY_LIST, FILTERED})


def ok_rows(batch: dict[str, list]) -> list[int]:
    """Indices of the rows in `batch` that later stages should work on."""
    return [i for i, status in enumerate(batch["status"]) if status == OK]

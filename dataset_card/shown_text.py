"""How much of a row's text the card and the gallery show.

Alt-texts, captions, URLs and error messages come from the web: one can be megabytes long (1 MB alt-texts
made an 8.4 MB card and a 42 MB gallery). Each is shown cut to `MAX_SHOWN_CHARS` characters, the cut
marked by an ellipsis, so a page's size is bounded by the rows it shows, whatever the data holds.
"""

from __future__ import annotations

MAX_SHOWN_CHARS = 300
ELLIPSIS = "…"


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` if it has at most `limit` characters, else its first `limit - 1` and an ellipsis. Cut before
    escaping: escaping after the cut never splits an escape sequence."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS

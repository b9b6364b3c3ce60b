"""Sample ok rows as the card and the gallery show them: the alt-text beside the chosen caption and every
candidate the first ranker kept, each with both rankers' similarities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from output.reader import OutputChunk, pick_ok_rows

COLUMNS = ["URL", "TEXT", "top_caption", "top_caption_raw", "all_captions", "all_similarities", "rerank_similarities"]


@dataclass(frozen=True)
class Candidate:
    caption: str
    first_similarity: float
    second_similarity: float | None  # None when the second ranker was off
    chosen: bool


@dataclass(frozen=True)
class Example:
    url: str | None
    text: str | None
    top_caption: str
    candidates: list[Candidate]
    row: dict  # the row as read, with any extra columns asked for

    @property
    def chosen(self) -> Candidate:
        return next(candidate for candidate in self.candidates if candidate.chosen)


def as_example(row: dict) -> Example:
    """The second ranker chose `top_caption_raw` among `all_captions` (repair then made `top_caption`)."""
    captions, first = row["all_captions"], row["all_similarities"]
    second = row["rerank_similarities"] or [None] * len(captions)
    chosen = captions.index(row["top_caption_raw"]) if row["top_caption_raw"] in captions else 0
    candidates = [Candidate(caption, a, b, i == chosen)
                  for i, (caption, a, b) in enumerate(zip(captions, first, second, strict=True))]
    return Example(row["URL"], row["TEXT"], row["top_caption"], candidates, row)


def sample_examples(chunks: Sequence[OutputChunk], count: int, extra_columns: tuple[str, ...] = ()) -> list[Example]:
    """`count` ok rows spread over the chunks (the same ones every time)."""
    return [as_example(row) for row in pick_ok_rows(chunks, count, COLUMNS + list(extra_columns))]

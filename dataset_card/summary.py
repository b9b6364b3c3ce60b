"""What the card says about the captions themselves, gathered in one streaming pass over the output.

Counts go into fixed bins as the batches go by (caption length per word, similarity per 0.005), so memory
stays constant however many rows there are; medians are read off the bins, to the bin's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from map_fns.status import OK
from output.reader import OutputChunk, iter_batches

SIMILARITY_BINS = np.linspace(-1.0, 1.0, 401)  # cosine similarities, 0.005 wide
COLUMNS = ["status", "top_caption", "all_similarities", "rerank_similarities"]


@dataclass
class Histogram:
    """Counts of values in fixed bins (`edges`), plus the exact extremes and mean."""

    edges: np.ndarray
    counts: np.ndarray = field(init=False)
    total: float = 0.0
    low: float = np.inf
    high: float = -np.inf

    def __post_init__(self):
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.counts += np.histogram(np.clip(values, self.edges[0], self.edges[-1]), self.edges)[0]
            self.total += float(values.sum())
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def describe(self) -> dict | None:
        """min / median (bin centre) / mean / max, or None when nothing was counted."""
        if not self.n:
            return None
        middle = int(np.searchsorted(np.cumsum(self.counts), (self.n + 1) / 2))
        centre = (self.edges[middle] + self.edges[middle + 1]) / 2
        return {"n": self.n, "min": self.low, "median": float(centre), "mean": self.total / self.n, "max": self.high}


def length_histogram(longest: int = 200) -> Histogram:
    """Caption lengths in words, one bin per length (longer ones in the last bin)."""
    return Histogram(np.arange(0, longest + 2) - 0.5)


@dataclass
class CaptionSummary:
    """Over the ok rows: words per `top_caption`, the first ranker's best similarity (`all_similarities[0]`)
    and the second ranker's similarity of the caption it chose (the highest of `rerank_similarities`)."""

    ok_rows: int = 0
    caption_words: Histogram = field(default_factory=length_histogram)
    first_ranker: Histogram = field(default_factory=lambda: Histogram(SIMILARITY_BINS))
    second_ranker: Histogram = field(default_factory=lambda: Histogram(SIMILARITY_BINS))

    def add(self, batch: pa.RecordBatch) -> None:
        ok = batch.filter(pc.equal(batch["status"], OK))
        self.ok_rows += ok.num_rows
        words = pc.list_value_length(pc.utf8_split_whitespace(pc.fill_null(ok["top_caption"], "")))
        self.caption_words.add(words.to_numpy(zero_copy_only=False))
        first = pc.list_element(_non_empty(ok["all_similarities"]), 0)
        self.first_ranker.add(_finite(first.to_numpy(zero_copy_only=False)))
        self.second_ranker.add(_finite(_row_max(_non_empty(ok["rerank_similarities"]))))


def _non_empty(lists: pa.Array) -> pa.Array:
    return lists.filter(pc.fill_null(pc.greater(pc.list_value_length(lists), 0), False))


def _row_max(lists: pa.Array) -> np.ndarray:
    """The largest value of each (non-empty) list; pyarrow has no list aggregate kernel."""
    best = np.full(len(lists), -np.inf)
    np.maximum.at(best, pc.list_parent_indices(lists).to_numpy(), pc.list_flatten(lists).to_numpy())
    return best


def _finite(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return values[np.isfinite(values)]


def summarise(chunks: Sequence[OutputChunk]) -> CaptionSummary:
    """One pass over the chunks' status, caption and similarity columns."""
    summary = CaptionSummary()
    for batch in iter_batches(chunks, COLUMNS):
        summary.add(batch)
    return summary

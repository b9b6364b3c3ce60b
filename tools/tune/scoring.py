"""How well one point's captions match the references: ROUGE-1/2/L, caption length, first-ranker similarity.

ROUGE is `rouge-score`'s (Google's re-implementation of ROUGE-1.5.5, the one `evaluate` wraps), F-measure,
Porter stemming on; with several references an image scores its best match, per ROUGE type (its
`score_multi`). Scores are means over the captioned rows that have references.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rouge_score.rouge_scorer import RougeScorer

from map_fns.status import OK
from output.reader import iter_batches, local_chunks

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
COLUMNS = ["URL", "status", "top_caption", "all_similarities"]


@dataclass
class PointScore:
    rows: int  # rows in the point's output
    ok_rows: int  # rows with a caption
    scored_rows: int  # ok rows whose URL has references
    rouge1: float | None
    rouge2: float | None
    rougeL: float | None  # noqa: N815  (the metric's own name)
    mean_words: float | None  # words per chosen caption, over ok rows
    mean_first_similarity: float | None  # first ranker's best similarity, over ok rows

    def to_dict(self) -> dict:
        return asdict(self)


def rouge_scorer() -> RougeScorer:
    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_output(output_dir: Path, references: dict[str, list[str]]) -> PointScore:
    """Score every ok row of a build output against `references` ({URL: captions})."""
    scorer = rouge_scorer()
    rows, words, similarities = 0, [], []
    rouge: dict[str, list[float]] = {name: [] for name in ROUGE_TYPES}
    for batch in iter_batches(local_chunks(output_dir), COLUMNS):
        rows += batch.num_rows
        for row in batch.to_pylist():
            if row["status"] != OK:
                continue
            words.append(len(row["top_caption"].split()))
            if row["all_similarities"]:
                similarities.append(row["all_similarities"][0])
            if refs := references.get(row["URL"]):
                for name, score in scorer.score_multi(refs, row["top_caption"]).items():
                    rouge[name].append(score.fmeasure)
    return PointScore(rows=rows, ok_rows=len(words), scored_rows=len(rouge["rougeL"]),
                      **{name: _mean(values) for name, values in rouge.items()},
                      mean_words=_mean(words), mean_first_similarity=_mean(similarities))

"""Rerank stage: a second CLIP (RN50x64) picks the final caption among the ranker's top few.

Two CLIPs with different architectures agree on good captions more than on each other's blind spots,
which is why LAION-COCO lets the second one choose among the first one's shortlist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from map_fns.clip_score import ClipScorer
from map_fns.flags import NONE, clip_spec
from map_fns.precision import resolve_dtype
from map_fns.status import ok_rows

if TYPE_CHECKING:
    import torch


@dataclass
class RerankConfig:
    reranker: str = field(
        default="RN50x64/openai",
        metadata={
            "help": "open_clip model choosing the final caption: MODEL/PRETRAINED, hf-hub:ORG/REPO, "
            "local-dir:/PATH, or 'none' to keep the ranker's best"
        },
    )

    def __post_init__(self):
        clip_spec(self, "reranker", none_allowed=True)


def best_index(scores: list[float]) -> int:
    """Index of the highest score; on ties the earliest, i.e. the one the ranker preferred."""
    if not scores:
        raise ValueError("no scores to choose from")
    return max(range(len(scores)), key=scores.__getitem__)


def make_rerank_fn(cfg: RerankConfig, device: str | torch.device, *, precision: str = "auto",
                   model_batch_size: int = 0) -> Callable[[dict[str, list]], dict[str, list]]:
    """Load the reranker once (not at all for 'none'); the fn adds `rerank_similarities`, `top_caption_raw`.

    `precision` and `model_batch_size` as for `make_rank_fn`; 'none' ignores them.
    """
    if cfg.reranker == NONE:
        return _keep_ranker_best
    scorer = ClipScorer(cfg.reranker, device, dtype=resolve_dtype(precision, device),
                        model_batch_size=model_batch_size)

    def rerank(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["status"])
        similarities: list[list[float] | None] = [None] * n
        top: list[str | None] = [None] * n
        rows = ok_rows(batch)
        if rows:
            shortlists = [batch["all_captions"][i] for i in rows]
            scores = scorer.similarities([batch["_image"][i] for i in rows], shortlists)
            for i, shortlist, row_scores in zip(rows, shortlists, scores):
                similarities[i] = row_scores
                top[i] = shortlist[best_index(row_scores)]
        return {"rerank_similarities": similarities, "top_caption_raw": top}

    return rerank


def _keep_ranker_best(batch: dict[str, list]) -> dict[str, list]:
    """Reranking off: the ranker's first choice is final."""
    ok = set(ok_rows(batch))
    return {
        "rerank_similarities": [None] * len(batch["status"]),
        "top_caption_raw": [captions[0] if i in ok else None for i, captions in enumerate(batch["all_captions"])],
    }

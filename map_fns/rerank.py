"""Rerank stage: a second CLIP (RN50x64) picks the final caption among the ranker's top few.

Two CLIPs with different architectures agree on good captions more than on each other's blind spots,
which is why LAION-COCO lets the second one choose among the first one's shortlist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from map_fns.clip_score import shared_scorer
from map_fns.flags import NONE, clip_spec
from map_fns.precision import resolve_dtype
from map_fns.stage import Column, Stage, engine_loader, on_ok_rows

if TYPE_CHECKING:
    import torch

WRITES = (Column("rerank_similarities", "list<float64>"), Column("top_caption_raw", "string"))


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
        return on_ok_rows(_keep_ranker_best, WRITES)
    scorer = shared_scorer(cfg.reranker, device, dtype=resolve_dtype(precision, device, "open_clip"),
                           model_batch_size=model_batch_size)

    def rerank(rows: dict[str, list]) -> dict[str, list]:
        scores = scorer.similarities(rows["_image"], rows["all_captions"])
        top = [shortlist[best_index(row_scores)] for shortlist, row_scores in zip(rows["all_captions"], scores)]
        return {"rerank_similarities": scores, "top_caption_raw": top}

    return on_ok_rows(rerank, WRITES)


def _keep_ranker_best(rows: dict[str, list]) -> dict[str, list]:
    """Reranking off: the ranker's first choice is final."""
    return {"rerank_similarities": [None] * len(rows["status"]),
            "top_caption_raw": [captions[0] for captions in rows["all_captions"]]}


STAGE = Stage("rerank", RerankConfig, engine_loader(make_rerank_fn), reads=("_image", "all_captions", "status"),
              writes=WRITES, model="reranker", model_kind="open_clip", role="second ranker")

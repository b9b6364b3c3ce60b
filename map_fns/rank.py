"""Rank stage: keep the BLIP candidates that CLIP ViT-L/14 finds closest to the image.

LAION-COCO keeps the 5 best of 40 sampled captions; they become `all_captions`, best first, and the
rerank stage picks the final one among them. With `--keep_all_candidates` every unique candidate is also
stored with its similarity, in sampling order, as LAION's own code (andreaskoepf/laion_idle_cap) stored them;
the columns are null otherwise, so that every output has one schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from map_fns.clip_score import shared_scorer
from map_fns.flags import at_least, clip_spec
from map_fns.precision import resolve_dtype
from map_fns.stage import Column, Stage, engine_loader, on_ok_rows

WRITES = (Column("all_captions", "list<string>"), Column("all_similarities", "list<float64>"),
          Column("candidates", "list<string>"), Column("candidate_similarities", "list<float64>"))

if TYPE_CHECKING:
    import torch


@dataclass
class RankConfig:
    ranker: str = field(
        default="ViT-L-14/openai",
        metadata={
            "help": "open_clip model ranking the candidates: MODEL/PRETRAINED, hf-hub:ORG/REPO or local-dir:/PATH"
        },
    )
    keep_top: int = field(default=5, metadata={"help": "how many of the best-ranked candidates to keep"})
    keep_all_candidates: bool = field(
        default=False,
        metadata={"help": "also store every unique candidate (`candidates`, in sampling order) with its similarity "
                          "(`candidate_similarities`); null when off"},
    )

    def __post_init__(self):
        clip_spec(self, "ranker")
        at_least(self, "keep_top", 1, integer=True)


def top_k_by_score(items: list[str], scores: list[float], k: int) -> tuple[list[str], list[float]]:
    """The `k` highest-scoring items and their scores, best first; ties keep the earlier item first."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    order = sorted(range(len(items)), key=lambda i: -scores[i])[:k]
    return [items[i] for i in order], [scores[i] for i in order]


def make_rank_fn(cfg: RankConfig, device: str | torch.device, *, precision: str = "auto",
                 model_batch_size: int = 0) -> Callable[[dict[str, list]], dict[str, list]]:
    """Load the ranker once; the returned batched fn adds `all_captions` and `all_similarities`, and with
    `cfg.keep_all_candidates` `candidates` and `candidate_similarities` (else null).

    `precision` is resolved for `device` (`map_fns.precision`); images go through CLIP `model_batch_size` at a
    time, or as many as fit in free memory for 0. A row's `_image_embedding` made by the same model (the screen
    stage's, when it reads the ranker's CLIP) stands in for running the image tower again.
    """
    scorer = shared_scorer(cfg.ranker, device, dtype=resolve_dtype(precision, device, "open_clip"),
                           model_batch_size=model_batch_size)

    def rank(rows: dict[str, list]) -> dict[str, list]:
        if not all(rows["_candidates"]):
            raise ValueError("a row has status ok but no candidates; the captioner must mark it no_caption")
        scores = scorer.similarities(rows["_image"], rows["_candidates"], rows.get("_image_embedding"))
        kept = [top_k_by_score(candidates, row_scores, cfg.keep_top)
                for candidates, row_scores in zip(rows["_candidates"], scores)]
        every = cfg.keep_all_candidates
        return {"all_captions": [captions for captions, _ in kept], "all_similarities": [sims for _, sims in kept],
                "candidates": rows["_candidates"] if every else [None] * len(kept),
                "candidate_similarities": scores if every else [None] * len(kept)}

    return on_ok_rows(rank, WRITES)


STAGE = Stage("rank", RankConfig, engine_loader(make_rank_fn), reads=("_image", "_candidates", "status"),
              writes=WRITES, model="ranker", model_kind="open_clip", role="first ranker")

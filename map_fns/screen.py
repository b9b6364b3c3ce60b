"""Screen stage: scores of our own from each fetched image's CLIP ViT-L/14 embedding, before it is captioned.

The first ranker runs CLIP ViT-L/14 on every image anyway; the small heads LAION published on that embedding turn
it into `punsafe_pred` (LAION's CLIP-based NSFW detector) and `aesthetic` (LAION's aesthetic predictor) almost for
free. With `--max_punsafe_pred` an image scored above it becomes `filtered` here: it is never captioned, and its
bytes are never written or shown. When `--screen_clip` is the ranker, the ranker takes the embeddings made here
instead of running its image tower again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from map_fns.embedding_heads import AESTHETIC_HEAD, PUNSAFE_HEAD
from map_fns.flags import NONE, ConfigError, clip_spec, model_or_none
from map_fns.precision import resolve_dtype
from map_fns.stage import Column, Stage, engine_loader, on_ok_rows
from map_fns.status import FILTERED, OK

SCORES = (Column("punsafe_pred", "float64"), Column("aesthetic", "float64"))
WRITES = (*SCORES, Column("status", "string"), Column("error", "string"), Column("_image_embedding"))


@dataclass
class ScreenConfig:
    screen_clip: str = field(
        default="ViT-L-14/openai",
        metadata={"help": "open_clip model whose image embeddings the heads read: the one they were trained on "
                          "(LAION's: ViT-L-14/openai); when it is also --ranker, its embeddings are reused there."},
    )
    punsafe_head: str = field(
        default=PUNSAFE_HEAD,
        metadata={"help": "NSFW head on the image embedding (punsafe_pred, 0-1): Hub ORG/REPO/FILE or a local "
                          f"file, or {NONE!r}."},
    )
    aesthetic_head: str = field(
        default=AESTHETIC_HEAD,
        metadata={"help": f"Aesthetic head on the image embedding (aesthetic, ~1-10): Hub ORG/REPO/FILE or a local "
                          f"file, or {NONE!r}."},
    )
    max_punsafe_pred: float | None = field(
        default=None,
        metadata={"help": "Images whose punsafe_pred is above this are not captioned and their bytes never "
                          "written (status filtered)."},
    )

    def __post_init__(self):
        clip_spec(self, "screen_clip")
        model_or_none(self, "punsafe_head")
        model_or_none(self, "aesthetic_head")
        if self.max_punsafe_pred is not None and self.punsafe_head == NONE:
            raise ConfigError(f"--max_punsafe_pred {self.max_punsafe_pred} needs a --punsafe_head, got {NONE!r}")

    @property
    def heads(self) -> dict[str, tuple[str, str]]:
        """Each head that runs, by the column it fills: (its kind, as `embedding_heads.load_head` takes it; spec)."""
        chosen = {"punsafe_pred": ("punsafe", self.punsafe_head), "aesthetic": ("aesthetic", self.aesthetic_head)}
        return {column: (kind, spec) for column, (kind, spec) in chosen.items() if spec != NONE}


def over_threshold(punsafe: list[float], limit: float | None) -> list[str | None]:
    """Per image, why it is filtered (its punsafe_pred is above `limit`), or None."""
    return [None if limit is None or score <= limit else f"punsafe_pred {score:.3f} is above --max_punsafe_pred "
            f"{limit:g}" for score in punsafe]


def make_screen_fn(cfg: ScreenConfig, device, *, precision: str = "auto",
                   model_batch_size: int = 0) -> Callable[[dict[str, list]], dict[str, list]]:
    """Load the CLIP model and the heads once (nothing when no head runs); the returned batched fn adds
    `punsafe_pred`, `aesthetic` (null for a head that does not run) and `_image_embedding` to ok rows, and
    makes those over `cfg.max_punsafe_pred` `filtered`."""
    if not cfg.heads:
        return lambda batch: {**{name: [None] * len(batch["status"]) for name in ("punsafe_pred", "aesthetic",
                                                                                   "_image_embedding")},
                              "status": batch["status"], "error": batch["error"]}
    from map_fns.clip_score import shared_scorer
    from map_fns.embedding_heads import load_head

    scorer = shared_scorer(cfg.screen_clip, device, dtype=resolve_dtype(precision, device, "open_clip"),
                           model_batch_size=model_batch_size)
    heads = {column: load_head(spec, kind, device) for column, (kind, spec) in cfg.heads.items()}
    width = scorer.embedding_width
    for (kind, spec), head in zip(cfg.heads.values(), heads.values()):
        if head.input_dim != width:
            raise ConfigError(f"--{kind}_head {spec!r} reads {head.input_dim}-wide embeddings, but --screen_clip "
                              f"{cfg.screen_clip!r} makes {width}-wide ones (the heads LAION published read "
                              "ViT-L-14/openai's 768)")

    def screen(rows: dict[str, list]) -> dict[str, list]:
        import torch

        embeddings = scorer.image_embeddings(rows["_image"])
        stacked = torch.stack([embedding.vector for embedding in embeddings])
        scores = {column.name: heads[column.name](stacked) if column.name in heads else [None] * len(embeddings)
                  for column in SCORES}
        filtered = over_threshold(scores["punsafe_pred"], cfg.max_punsafe_pred) if "punsafe_pred" in heads else \
            [None] * len(embeddings)
        return {**scores, "_image_embedding": embeddings,
                "status": [FILTERED if reason else OK for reason in filtered],
                "error": [reason or error for reason, error in zip(filtered, rows["error"])]}

    return on_ok_rows(screen, WRITES)


# No `model`: the card names the heads and their CLIP where it says what was kept out, not among the recipe's models.
STAGE = Stage("screen", ScreenConfig, engine_loader(make_screen_fn), reads=("_image", "status", "error"),
              writes=WRITES, recipe=False)

"""The schema table of the card: each output column with its type and what it means (DESIGN §3)."""

from __future__ import annotations

from datasets import Features, Image, List, Value

MEANINGS = {
    "URL": "source URL of the image",
    "TEXT": "the source's alt-text",
    "image": "the image bytes the source embedded (nothing was downloaded for these rows); null where `status` is "
             "`blocked_by_list` or `filtered`",
    "top_caption": "the chosen caption after repair; null unless `status` is `ok`",
    "top_caption_raw": "the chosen caption before repair",
    "all_captions": "the candidates kept by the first ranker, best first",
    "all_similarities": "their first-ranker cosine similarities to the image",
    "rerank_similarities": "second-ranker cosine similarities, same order as `all_captions`",
    "candidates": "every unique sampled candidate, in sampling order (with `--keep_all_candidates`, else null)",
    "candidate_similarities": "their first-ranker cosine similarities, same order as `candidates`",
    "status": "`ok`, or why the row has no caption: `blocked_by_list`, `filtered`, `invalid_url`, `blocked`, "
              "`opted_out`, `fetch_error`, `decode_error`, `no_caption`",
    "error": "short reason when `status` is not `ok`, else null",
    "image_width": "width of the image actually decoded",
    "image_height": "height of the image actually decoded",
    "punsafe_pred": "probability the image is unsafe (NSFW), by the NSFW head on its CLIP embedding; null unless "
                    "scored",
    "aesthetic": "aesthetic score (about 1 to 10), by the aesthetic head on its CLIP embedding; null unless scored",
}
PASSED_THROUGH = "passed through from the source unchanged"


def type_name(feature) -> str:
    """A short type name: `string`, `int32`, `list<float64>`, `image`."""
    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, List):
        return f"list<{type_name(feature.feature)}>"
    if isinstance(feature, Image):
        return "image"
    return type(feature).__name__


def schema_rows(features: Features) -> list[tuple[str, str, str]]:
    """(column, type, meaning) for every column, in the output's order."""
    return [(name, type_name(feature), MEANINGS.get(name, PASSED_THROUGH)) for name, feature in features.items()]

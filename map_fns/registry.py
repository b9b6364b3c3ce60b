"""The pipeline, in run order: every stage's declaration (`map_fns.stage.Stage`) in one list.

    source rows: URL, TEXT, image?, _row_key, other source columns
      fetch    URL (image)              -> status, error, image_width, image_height, _image
      screen   _image                   -> punsafe_pred, aesthetic, status (filtered), error, _image_embedding
      caption  _image, _row_key         -> _candidates, status (no_caption), error
      rank     _image, _candidates      -> all_captions, all_similarities (reusing _image_embedding)
      rerank   _image, all_captions     -> rerank_similarities, top_caption_raw
      repair   top_caption_raw          -> top_caption
    output: source columns, then the stages' columns (internal `_` ones dropped)

Everything that depends on the list of stages reads it from here: the run loop (one `datasets` map per stage),
the config sections and `--help`, tuning's grid keys, the card's method table, the benchmark and the
equivalence tests. Adding a stage: a module with its config, its map function and its `STAGE`, and one entry
here.
"""

from __future__ import annotations

from map_fns import caption, fetch, rank, repair, rerank, screen
from map_fns.stage import Stage

STAGES: list[Stage] = [fetch.STAGE, screen.STAGE, caption.STAGE, rank.STAGE, rerank.STAGE, repair.STAGE]


def check_chain(stages: list[Stage], source_columns: set[str]) -> None:
    """Raise `ValueError` naming the first stage that reads a column neither the source nor an earlier stage
    provides: a stage added in the wrong place, or a renamed hand-off, fails before any row is read."""
    available = set(source_columns)
    for stage in stages:
        missing = [name for name in stage.reads if name not in available]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads {', '.join(map(repr, missing))}, which neither the source "
                             "nor an earlier stage writes")
        available.update(stage.written)

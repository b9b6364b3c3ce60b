"""Choosing what is rated: rows spread over a finished output, each giving two items (its machine caption and
its human one) with the same picture, stored once so that every rater and every restart rates the same set.

Images come through the project's own fetch stage (embedded bytes when the output has them, else the URL,
with the build's address policy), as the gallery's thumbnails do; a row whose image cannot be fetched is
skipped: a caption cannot be judged without its picture.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from builder.config import ConfigError
from dataset_card.thumbnails import thumbnails
from map_fns.fetch import FetchConfig
from map_fns.images import one_line
from output.layout import CHUNK_GLOB
from output.reader import output_chunks
from tools.human_eval.errors import HumanEvalError
from tools.human_eval.rows import HumanCaptions, pick_rated_rows
from tools.human_eval.store import HUMAN, MACHINE, Item, RatingStore
from tools.references import load_references

log = logging.getLogger(__name__)

DISPLAY_SIDE = 448  # longest side of the picture on the rating page, in pixels


@dataclass(frozen=True)
class EvalSettings:
    """What chose the items; a database keeps them and refuses to serve under other ones."""

    dataset: str  # output folder or Hub dataset repo id
    human_column: str
    seed: int
    items: int  # rows asked for; each gives two items
    references: str = ""  # human captions by URL (see tools.references) instead of `human_column`; "" for none

    def as_meta(self) -> dict[str, str]:
        """As stored: local paths made absolute, the same from any working directory."""
        def absolute(spec: str) -> str:
            return str(Path(spec).resolve()) if spec and Path(spec).exists() else spec

        values = {**asdict(self), "dataset": absolute(self.dataset), "references": absolute(self.references)}
        return {key: str(value) for key, value in values.items()}


def prepare_items(store: RatingStore, settings: EvalSettings, fetch: FetchConfig) -> None:
    """Reuse the items `store` holds, refusing other settings; on first start choose and store them.
    `fetch`: the fetch settings images come with."""
    wanted, stored = settings.as_meta(), store.meta()
    if stored:
        for key, value in wanted.items():
            if stored.get(key) != value:
                raise HumanEvalError(f"{store.path} was made with --{key} {stored.get(key)!r}, not {value!r}: "
                                     "serve it with its own settings, or give another --db")
        log.info("rating the %d items already in %s", len(store.item_ids()), store.path)
        return
    items = choose_items(settings, fetch)
    store.create(wanted, items)
    log.info("stored %d items (%d rows) from %s in %s", len(items), len(items) // 2, settings.dataset, store.path)


def choose_items(settings: EvalSettings, fetch: FetchConfig) -> list[Item]:
    """Two items per picked row whose image could be fetched, with fresh opaque ids."""
    human = human_captions(settings)
    try:
        chunks = output_chunks(settings.dataset)
        if not chunks:
            raise HumanEvalError(f"{settings.dataset!r} holds no {CHUNK_GLOB}: not a finished output")
        rows = pick_rated_rows(chunks, human, settings.items, settings.seed)
    except HumanEvalError:
        raise
    except (OSError, ValueError, pa.ArrowException) as err:  # unknown repo, no access, network, bad parquet
        raise HumanEvalError(f"cannot read the dataset {settings.dataset!r}: {one_line(err)}") from err
    if not rows:
        wanted = f"a reference in {settings.references!r}" if settings.references else repr(settings.human_column)
        raise HumanEvalError(f"no row of {settings.dataset!r} has status 'ok', a top_caption and a non-blank {wanted}")
    images = [row.image for row in rows] if any(row.image for row in rows) else None
    shown = thumbnails([row.url for row in rows], images, fetch, side=DISPLAY_SIDE)
    items, missing = [], []
    for row, (picture, why_not) in zip(rows, shown, strict=True):
        if picture is None:
            missing.append(why_not)
            continue
        items += [Item(secrets.token_hex(8), row.row_index, row.url, kind, caption, picture)
                  for kind, caption in ((MACHINE, row.machine), (HUMAN, row.human))]
    if missing:
        log.warning("skipped %d of %d picked rows whose image could not be fetched (first: %s)",
                    len(missing), len(rows), missing[0])
    if not items:
        raise HumanEvalError(f"none of the {len(rows)} picked rows of {settings.dataset!r} has an image that "
                             f"could be fetched (first: {missing[0]})")
    return items


def human_captions(settings: EvalSettings) -> HumanCaptions:
    """The `human_column`, or with `references` the references of each row's URL."""
    if not settings.references:
        return HumanCaptions(settings.human_column, None, settings.seed)
    try:
        return HumanCaptions("URL", load_references(settings.references), settings.seed)
    except ConfigError as err:
        raise HumanEvalError(str(err)) from err

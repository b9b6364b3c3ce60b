"""Choosing what is rated: rows spread over a finished output, each giving two items (its machine caption and
its human one) with the same picture, stored once so that every rater and every restart rates the same set.

Images come through the project's own fetch stage (embedded bytes when the output has them, else the URL,
with the build's address policy), as the gallery's thumbnails do; a row whose image cannot be fetched is
skipped: a caption cannot be judged without its picture.
"""

from __future__ import annotations

import logging
import random
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.config import ConfigError
from builder.human_eval.errors import HumanEvalError
from builder.human_eval.store import HUMAN, MACHINE, Item, RatingStore
from builder.references import load_references
from dataset_card.thumbnails import thumbnails
from map_fns.images import one_line
from map_fns.status import OK

log = logging.getLogger(__name__)

DISPLAY_SIDE = 448  # longest side of the picture on the rating page, in pixels


@dataclass(frozen=True)
class EvalSettings:
    """What chose the items; a database keeps them and refuses to serve under other ones."""

    dataset: str  # output folder or Hub dataset repo id
    human_column: str
    seed: int
    items: int  # rows asked for; each gives two items
    references: str = ""  # human captions by URL (see builder.references) instead of `human_column`; "" for none

    def as_meta(self) -> dict[str, str]:
        """As stored: local paths made absolute, the same from any working directory."""
        def absolute(spec: str) -> str:
            return str(Path(spec).resolve()) if spec and Path(spec).exists() else spec

        values = {**asdict(self), "dataset": absolute(self.dataset), "references": absolute(self.references)}
        return {key: str(value) for key, value in values.items()}


def prepare_items(store: RatingStore, settings: EvalSettings, fetch: dict) -> None:
    """Reuse the items `store` holds, refusing other settings; on first start choose and store them.
    `fetch` is a `map_fns.fetch.FetchConfig` as a dict."""
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


def choose_items(settings: EvalSettings, fetch: dict) -> list[Item]:
    """Two items per picked row whose image could be fetched, with fresh opaque ids."""
    import datasets

    try:
        dataset = datasets.load_dataset(settings.dataset, split="train")
    except Exception as err:  # a missing folder, an unknown repo, no train split, unreadable parquet...
        raise HumanEvalError(f"cannot read the dataset {settings.dataset!r}: {one_line(err)}") from err
    human = human_captions(dataset, settings)
    rows = pick_rows(usable_rows(dataset, human), settings.items, settings.seed)
    if not rows:
        wanted = f"a reference in {settings.references!r}" if settings.references else repr(settings.human_column)
        raise HumanEvalError(f"no row of {settings.dataset!r} has status 'ok', a top_caption and a non-blank {wanted}")
    picked = dataset.select(rows)
    if "image" in picked.column_names and isinstance(picked.features["image"], datasets.Image):
        picked = picked.cast_column("image", datasets.Image(decode=False))  # the bytes, for the fetch stage
    shown_columns = [column for column in ("URL", "image") if column in picked.column_names]
    if not shown_columns:
        raise HumanEvalError(f"{settings.dataset!r} has neither an 'image' nor a 'URL' column: no picture to show")
    columns = picked.select_columns(["top_caption", *shown_columns]).to_dict()
    urls = columns.get("URL") or [None] * len(rows)
    shown = thumbnails(urls, columns.get("image"), fetch, side=DISPLAY_SIDE)
    items, missing = [], []
    for row, url, machine, (picture, why_not) in zip(rows, urls, columns["top_caption"], shown, strict=True):
        if picture is None:
            missing.append(why_not)
            continue
        items += [Item(secrets.token_hex(8), row, url, kind, caption.strip(), picture)
                  for kind, caption in ((MACHINE, machine), (HUMAN, human[row]))]
    if missing:
        log.warning("skipped %d of %d picked rows whose image could not be fetched (first: %s)",
                    len(missing), len(rows), missing[0])
    if not items:
        raise HumanEvalError(f"none of the {len(rows)} picked rows of {settings.dataset!r} has an image that "
                             f"could be fetched (first: {missing[0]})")
    return items


def human_captions(dataset, settings: EvalSettings) -> list[str | None]:
    """Each row's human caption: its `human_column`, or with `references` one of its URL's references (chosen
    by the seed, the same on every start)."""
    column = "URL" if settings.references else settings.human_column
    if column not in dataset.column_names:
        raise HumanEvalError(f"the dataset has no column {column!r} (it has {', '.join(dataset.column_names)})")
    if not settings.references:
        return dataset[column]
    try:
        references = load_references(settings.references)
    except ConfigError as err:
        raise HumanEvalError(str(err)) from err
    return [random.Random(f"{settings.seed}:{url}").choice(references[url]) if url in references else None
            for url in dataset[column]]


def usable_rows(dataset, human: list[str | None]) -> list[int]:
    """Indices of the rows with status ok, a machine caption and a non-blank human caption."""
    for column in ("status", "top_caption"):
        if column not in dataset.column_names:
            raise HumanEvalError(f"the dataset has no column {column!r} (it has {', '.join(dataset.column_names)})")
    return [row for row, (status, machine, caption) in enumerate(zip(dataset["status"], dataset["top_caption"], human))
            if status == OK and _is_text(machine) and _is_text(caption)]


def pick_rows(rows: list[int], count: int, seed: int) -> list[int]:
    """`count` of `rows` spread evenly: one from each of `count` equal stretches, where in it chosen by `seed`
    (all of them when there are no more)."""
    if count >= len(rows):
        return rows
    rng = random.Random(seed)
    bounds = [round(i * len(rows) / count) for i in range(count + 1)]
    return [rows[rng.randrange(start, end)] for start, end in zip(bounds, bounds[1:])]


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())

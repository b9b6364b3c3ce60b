"""Which rows are rated, found without loading the output (`read_chosen_rows`: the text columns first, then
only the row groups holding the picked rows, pictures included); a Hub dataset is read remotely column by
column, so neither a large local output nor a pushed one is ever copied whole.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from map_fns.status import OK
from output.reader import OutputChunk, read_chosen_rows
from tools.human_eval.errors import HumanEvalError

PICTURE_COLUMNS = ("URL", "image")


@dataclass(frozen=True)
class HumanCaptions:
    """Where a row's human caption comes from: an output column, or (with `references`) a reference caption
    of the row's URL, chosen by the seed so every start picks the same one."""

    column: str  # the output column read: the caption column, or URL when captions come from references
    references: dict[str, list[str]] | None
    seed: int

    def of(self, value) -> str | None:
        if self.references is None:
            return value.strip() if isinstance(value, str) and value.strip() else None
        captions = self.references.get(value)
        return random.Random(f"{self.seed}:{value}").choice(captions) if captions else None


@dataclass(frozen=True)
class RatedRow:
    row_index: int  # in the output's order (file by file)
    url: str | None
    machine: str
    human: str
    image: dict | None  # the embedded image cell ({"bytes", "path"}), or None when the output has none


def check_columns(chunk: OutputChunk, human: HumanCaptions) -> list[str]:
    """The picture columns the output has; a missing column is named."""
    names = chunk.open().schema_arrow.names
    for column in ("status", "top_caption", human.column):
        if column not in names:
            raise HumanEvalError(f"the dataset has no column {column!r} (it has {', '.join(names)})")
    pictures = [column for column in PICTURE_COLUMNS if column in names]
    if not pictures:
        raise HumanEvalError("the dataset has neither an 'image' nor a 'URL' column: no picture to show")
    return pictures


def pick_rated_rows(chunks: list[OutputChunk], human: HumanCaptions, count: int, seed: int) -> list[RatedRow]:
    """`count` usable rows (status ok, a machine caption and a human one) spread over the output by
    `pick_rows`, read in full."""
    def usable(table: pa.Table) -> list[int]:
        columns = table.select(["status", "top_caption", human.column]).to_pydict()
        return [row for row, (status, machine, value) in enumerate(zip(*columns.values()))
                if status == OK and isinstance(machine, str) and machine.strip() and human.of(value)]

    pictures = check_columns(chunks[0], human)
    test_columns = list(dict.fromkeys(["status", "top_caption", human.column]))
    chosen = read_chosen_rows(chunks, test_columns, usable, lambda total: pick_rows(range(total), count, seed),
                              pictures)
    return [RatedRow(index, row.get("URL"), row["top_caption"].strip(), human.of(row[human.column]),
                     row.get("image")) for index, row in chosen]


def pick_rows(rows: Sequence[int], count: int, seed: int) -> list[int]:
    """`count` of `rows` spread evenly: one from each of `count` equal stretches, where in it chosen by `seed`
    (all of them when there are no more)."""
    if count >= len(rows):
        return list(rows)
    rng = random.Random(seed)
    bounds = [round(i * len(rows) / count) for i in range(count + 1)]
    return [rows[rng.randrange(start, end)] for start, end in zip(bounds, bounds[1:])]

"""Which rows are rated, found without loading the output: a first pass counts the usable rows of every row
group from the text columns alone; the seed picks among them; a second pass reads just the row groups that
hold a picked row, pictures included. Memory stays bounded by one row group, and a Hub dataset is read
remotely column by column, so neither a large local output nor a pushed one is ever copied whole.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from tqdm.auto import tqdm

from builder.human_eval.errors import HumanEvalError
from dataset_card.output_files import OutputChunk
from map_fns.status import OK

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


def _usable(table: pa.Table, human: HumanCaptions) -> list[int]:
    """Rows of `table` with status ok, a machine caption and a human one."""
    columns = table.select(["status", "top_caption", human.column]).to_pydict()
    return [row for row, (status, machine, value) in enumerate(zip(*columns.values()))
            if status == OK and isinstance(machine, str) and machine.strip() and human.of(value)]


def pick_rated_rows(chunks: list[OutputChunk], human: HumanCaptions, count: int, seed: int) -> list[RatedRow]:
    """`count` usable rows spread over the output (`pick_rows` over the usable ones), read in full."""
    pictures = check_columns(chunks[0], human)
    text_columns = list(dict.fromkeys(["status", "top_caption", human.column]))
    groups = []  # (chunk, row group, first row index, usable rows in it), in output order
    first_row = 0
    for chunk in tqdm(chunks, desc="counting usable rows", unit="file", disable=len(chunks) < 2):
        parquet = chunk.open()
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=text_columns)
            groups.append((chunk, group, first_row, len(_usable(table, human))))
            first_row += table.num_rows
    picked = iter(pick_rows(range(sum(usable for *_, usable in groups)), count, seed))
    wanted, rows, seen = next(picked, None), [], 0
    for chunk, group, first_row, usable in groups:
        if wanted is None:
            break
        if wanted >= seen + usable:
            seen += usable
            continue
        table = chunk.open().read_row_group(group, columns=list(dict.fromkeys(text_columns + pictures)))
        in_group, cells = _usable(table, human), table.to_pydict()
        while wanted is not None and wanted < seen + usable:
            row = in_group[wanted - seen]
            rows.append(RatedRow(first_row + row, cells.get("URL", [None] * table.num_rows)[row],
                                 cells["top_caption"][row].strip(), human.of(cells[human.column][row]),
                                 cells["image"][row] if "image" in cells else None))
            wanted = next(picked, None)
        seen += usable
    return rows


def pick_rows(rows: Sequence[int], count: int, seed: int) -> list[int]:
    """`count` of `rows` spread evenly: one from each of `count` equal stretches, where in it chosen by `seed`
    (all of them when there are no more)."""
    if count >= len(rows):
        return list(rows)
    rng = random.Random(seed)
    bounds = [round(i * len(rows) / count) for i in range(count + 1)]
    return [rows[rng.randrange(start, end)] for start, end in zip(bounds, bounds[1:])]

"""The task plan (source rows cut into tasks from parquet footers alone) and the seeking reader of a task's pieces."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from builder import tasks
from builder.tasks import Piece, Task, plan_from_footers, read_pieces

LAYOUTS = 400  # random layouts per property; the whole file still runs in a few seconds


def _random_layout(rng: random.Random) -> list[tuple[str, list[int]]]:
    """1-4 files of 1-5 row groups each: groups smaller and larger than a task, single-group files, and the
    odd empty group a writer can leave behind."""
    return [(f"part-{number}.parquet", [rng.choice([0, 1, rng.randint(1, 12), rng.randint(1, 90)])
                                        for _ in range(rng.randint(1, 5))])
            for number in range(rng.randint(1, 4))]


def _random_settings(rng: random.Random, layout) -> tuple[int, int | None]:
    total = sum(sum(groups) for _, groups in layout)
    rows_per_task = rng.choice([1, 2, rng.randint(1, 40), rng.randint(20, 200)])
    max_samples = rng.choice([None, None, rng.randint(0, total + 3)])
    return rows_per_task, max_samples


def _source_rows(layout, max_samples: int | None) -> list[tuple[str, int, int]]:
    """Every row the plan must cover, in source order, as (file, row in file, row group number)."""
    rows = [(path, first + offset, group)
            for path, groups in layout
            for group, (first, size) in enumerate(zip([sum(groups[:n]) for n in range(len(groups))], groups))
            for offset in range(size)]
    return rows if max_samples is None else rows[:max_samples]


def _planned_rows(plan: list[Task]) -> list[tuple[str, int, int]]:
    """Every row the plan's pieces name, in task then piece order, as (file, row in file, task)."""
    return [(piece.file, row, task.index) for task in plan for piece in task.pieces
            for row in range(piece.start, piece.stop)]


def _check_plan(layout, rows_per_task: int, max_samples: int | None) -> None:
    plan = plan_from_footers(layout, rows_per_task, max_samples)
    wanted = _source_rows(layout, max_samples)
    planned = _planned_rows(plan)
    context = f"layout {layout}, rows_per_task {rows_per_task}, max_samples {max_samples}"

    assert [(file, row) for file, row, _ in planned] == [(file, row) for file, row, _ in wanted], context
    assert [task.index for task in plan] == list(range(len(plan))), context
    assert all(0 < task.rows <= rows_per_task for task in plan), context
    assert all(piece.start < piece.stop for task in plan for piece in task.pieces), context

    task_of_row = {(file, row): task for file, row, task in planned}
    tasks_of_group: dict[tuple[str, int], set[int]] = {}
    for file, row, group in wanted:
        tasks_of_group.setdefault((file, group), set()).add(task_of_row[file, row])
    group_rows = {key: sum(1 for file, _, group in wanted if (file, group) == key) for key in tasks_of_group}
    for key, held_by in tasks_of_group.items():
        if group_rows[key] <= rows_per_task:
            assert len(held_by) == 1, f"row group {key} fits a task but was split over tasks {held_by}; {context}"

    # Tasks are filled before the next one starts: a task short of rows_per_task ended only because the next
    # row group (all of it, or a task's worth when it is bigger than a task) would not have fitted.
    first_group_of_task = {}
    for file, row, group in wanted:
        first_group_of_task.setdefault(task_of_row[file, row], (file, group))
    for task, following in zip(plan, plan[1:]):
        next_part = sum(1 for file, row, group in wanted
                        if (file, group) == first_group_of_task[following.index]
                        and task_of_row[file, row] == following.index)
        assert task.rows == rows_per_task or task.rows + next_part > rows_per_task, context


def test_plans_cover_every_row_once_in_order_in_tasks_of_at_most_the_task_size():
    rng = random.Random(16)
    for _ in range(LAYOUTS):
        layout = _random_layout(rng)
        _check_plan(layout, *_random_settings(rng, layout))


def test_a_plan_depends_only_on_the_footers_and_the_settings():
    rng = random.Random(61)
    for _ in range(LAYOUTS // 4):
        layout = _random_layout(rng)
        rows_per_task, max_samples = _random_settings(rng, layout)
        first = plan_from_footers(layout, rows_per_task, max_samples)
        again = plan_from_footers(layout, rows_per_task, max_samples)
        # The same footers arriving another way: a one-pass generator of tuples, as read from the files.
        streamed = plan_from_footers(((path, tuple(groups)) for path, groups in layout), rows_per_task, max_samples)
        saved = [Task.from_dict(value) for value in json.loads(json.dumps([task.to_dict() for task in first]))]
        assert first == again == streamed == saved


def test_one_file_of_one_big_row_group_is_cut_into_tasks_of_exactly_the_task_size():
    plan = plan_from_footers([("one.parquet", [1000])], 300)
    assert [task.pieces for task in plan] == [(Piece("one.parquet", 0, 300),), (Piece("one.parquet", 300, 600),),
                                              (Piece("one.parquet", 600, 900),), (Piece("one.parquet", 900, 1000),)]


def test_small_row_groups_of_several_files_share_tasks_as_one_range_per_file():
    plan = plan_from_footers([("a.parquet", [40, 40, 40]), ("b.parquet", [30]), ("c.parquet", [50, 10])], 100)
    assert [task.pieces for task in plan] == [
        (Piece("a.parquet", 0, 80),),  # a third group of 40 would make 120
        (Piece("a.parquet", 80, 120), Piece("b.parquet", 0, 30)),  # c's first group of 50 would make 120
        (Piece("c.parquet", 0, 60),),
    ]


def test_max_samples_cuts_mid_row_group_and_in_a_later_file():
    layout = [("a.parquet", [25, 25]), ("b.parquet", [25, 25])]
    assert [task.pieces for task in plan_from_footers(layout, 30, max_samples=37)] == [(Piece("a.parquet", 0, 25),),
                                                                                       (Piece("a.parquet", 25, 37),)]
    # the cut group's 12 kept rows fit beside the first group's 25: the plan counts kept rows, not the footer's
    assert [task.pieces for task in plan_from_footers(layout, 40, max_samples=37)] == [(Piece("a.parquet", 0, 37),)]
    assert [task.pieces for task in plan_from_footers(layout, 60, max_samples=62)] == [
        (Piece("a.parquet", 0, 50),), (Piece("b.parquet", 0, 12),)]
    assert plan_from_footers(layout, 40, max_samples=0) == []


# --- read_pieces --------------------------------------------------------------------------------------------------


def _write_groups(path: Path, name: str, groups: list[int], payload: int = 0, seed: int = 0) -> Path:
    """A parquet file whose row groups hold exactly `groups` rows; `payload` random bytes per row make the row
    groups big enough that reading one is visible in the bytes read."""
    rng = random.Random(seed)
    total = sum(groups)
    table = pa.table({"file": [name] * total, "n": list(range(total)),
                      "payload": [rng.randbytes(payload) for _ in range(total)]})
    with pq.ParquetWriter(path, table.schema, compression="none") as writer:
        first = 0
        for size in groups:
            writer.write_table(table.slice(first, size), row_group_size=max(size, 1))
            first += size
    assert [pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(len(groups))] == groups
    return path


def _expected(pieces: tuple[Piece, ...], skip: int) -> list[tuple[str, int]]:
    parts = [pq.read_table(piece.file, columns=["file", "n"]).slice(piece.start, piece.rows) for piece in pieces]
    table = pa.concat_tables(parts).slice(skip)
    return list(zip(table["file"].to_pylist(), table["n"].to_pylist()))


def _read(pieces: tuple[Piece, ...], skip: int) -> list[tuple[str, int]]:
    batches = list(read_pieces(pieces, skip))
    assert all(0 < batch.num_rows <= tasks.READ_BATCH for batch in batches)
    return [(file, n) for batch in batches for file, n in zip(batch["file"].to_pylist(), batch["n"].to_pylist())]


def test_read_pieces_returns_exactly_the_rows_after_skip_for_every_skip(tmp_path, monkeypatch):
    """Every skip of every task of a few random layouts: at and inside row-group boundaries, across pieces and
    files; reading in batches smaller than a row group so that skips also land inside a batch."""
    monkeypatch.setattr(tasks, "READ_BATCH", 4)
    rng = random.Random(7)
    for layout_number in range(10):
        folder = tmp_path / f"layout-{layout_number}"
        folder.mkdir()
        layout = [(str(_write_groups(folder / f"part-{n}.parquet", f"part-{n}", groups)), groups)
                  for n, groups in enumerate([[rng.randint(1, 15) for _ in range(rng.randint(1, 4))]
                                              for _ in range(rng.randint(1, 3))])]
        for task in plan_from_footers(layout, rng.choice([rng.randint(2, 9), rng.randint(10, 40)])):
            for skip in range(task.rows + 2):
                assert _read(task.pieces, skip) == _expected(task.pieces, skip), (layout, task, skip)


def test_read_pieces_of_hand_cut_ranges_across_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "READ_BATCH", 3)
    a = str(_write_groups(tmp_path / "a.parquet", "a", [5, 7, 1, 9]))
    b = str(_write_groups(tmp_path / "b.parquet", "b", [10]))
    # a: groups [0, 5) [5, 12) [12, 13) [13, 22); b: one group [0, 10); batches of 3 rows inside each group
    pieces = (Piece(a, 3, 13), Piece(b, 2, 8), Piece(a, 14, 20))
    tail = [("a", n) for n in range(14, 20)]
    assert _read(pieces, 0) == [("a", n) for n in range(3, 13)] + [("b", n) for n in range(2, 8)] + tail
    assert _read(pieces, 9) == [("a", 12)] + [("b", n) for n in range(2, 8)] + tail
    assert _read(pieces, 10) == [("b", n) for n in range(2, 8)] + tail
    assert _read(pieces, 15) == [("b", 7)] + tail
    assert _read(pieces, 16) == tail
    assert _read(pieces, 21) == [("a", 19)]
    assert _read(pieces, 22) == []


class _RecordingFile(MemoryFile):
    """An in-memory file that records the byte ranges read from it (what a remote store would be asked for)."""

    def __init__(self, data: bytes):
        super().__init__(None, None, data)
        self.ranges: list[tuple[int, int]] = []

    def read(self, size=-1):
        start = self.tell()
        data = super().read(size)
        self.ranges.append((start, start + len(data)))
        return data

    def readinto(self, buffer):
        raise AssertionError("pyarrow is expected to call read(); extend the recorder if that changes")

    def bytes_read_in(self, first: int, last: int) -> int:
        return sum(max(0, min(stop, last) - max(start, first)) for start, stop in self.ranges)


@pytest.fixture
def memory_files(tmp_path):
    """Put local parquet files into fsspec's `memory://` filesystem as recording files; read back by URL through
    `open_parquet`'s real fsspec path."""
    folder = f"/seek-{tmp_path.name}"  # tmp_path names are unique in a session
    placed = []

    def place(local: Path) -> tuple[str, _RecordingFile]:
        path = f"{folder}/{local.name}"
        file = MemoryFileSystem.store[path] = _RecordingFile(local.read_bytes())
        placed.append(path)
        return f"memory://{path}", file

    yield place
    for path in placed:
        MemoryFileSystem.store.pop(path, None)


def _group_bytes(local: Path) -> list[tuple[int, int]]:
    """Each row group's byte range [first, last) in the file, from the footer's column chunk offsets."""
    metadata = pq.ParquetFile(local).metadata
    spans = []
    for group in range(metadata.num_row_groups):
        chunks = [metadata.row_group(group).column(c) for c in range(metadata.num_columns)]
        starts = [chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
                  for chunk in chunks]
        spans.append((min(starts), max(start + chunk.total_compressed_size for start, chunk in zip(starts, chunks))))
    return spans


def test_read_pieces_seeks_to_the_row_group_of_the_first_wanted_row(tmp_path, memory_files):
    """A resumed task whose next row lies in the last row group reads that group and the footer, and not one byte
    of the row groups before it: their rows are skipped by the footer's counts."""
    groups = [1000] * 8  # ~200 KB per row group, well beyond what a footer read fetches with it
    local = _write_groups(tmp_path / "big.parquet", "big", groups, payload=200)
    url, recorder = memory_files(local)
    spans = _group_bytes(local)
    before_last = (spans[0][0], spans[-2][1])
    piece = (Piece(url, 0, sum(groups)),)

    from_start = list(read_pieces(piece, 0))
    assert sum(batch.num_rows for batch in from_start) == 8000
    assert recorder.bytes_read_in(*before_last) >= before_last[1] - before_last[0]  # the recorder sees reads

    recorder.ranges.clear()
    resumed = pa.concat_tables(read_pieces(piece, 7500))
    assert resumed["n"].to_pylist() == list(range(7500, 8000))
    assert recorder.bytes_read_in(*before_last) == 0, f"read {recorder.ranges}, earlier row groups in {before_last}"
    assert recorder.bytes_read_in(*spans[-1]) > 0


def test_read_pieces_does_not_open_a_file_whose_piece_is_skipped_whole(tmp_path, memory_files):
    first_url, first = memory_files(_write_groups(tmp_path / "a.parquet", "a", [50, 50]))
    second_url, second = memory_files(_write_groups(tmp_path / "b.parquet", "b", [50, 50]))
    rows = pa.concat_tables(read_pieces((Piece(first_url, 10, 100), Piece(second_url, 0, 100)), 95))
    assert list(zip(rows["file"].to_pylist(), rows["n"].to_pylist())) == [("b", n) for n in range(5, 100)]
    assert first.ranges == []
    assert second.ranges

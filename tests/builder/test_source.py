"""The source: resolving paths / Hub ids, picking columns, cutting it into tasks and streaming a task's rows."""

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, Image, Value
from PIL import Image as PILImage

from builder.config import ConfigError, SourceConfig
from builder.source import bundled_sample, check_source, map_columns, open_stream, plan_tasks, resolve_source


def _write(path: Path, table: pa.Table, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _numbered(start: int, stop: int) -> pa.Table:
    return pa.table({"url": [f"http://img.test/{i}.jpg" for i in range(start, stop)],
                     "caption": [f"alt text {i}" for i in range(start, stop)],
                     "n": list(range(start, stop))})


def _png(color: str, size=(3, 2)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _schema(columns: list[str]) -> pa.Schema:
    """String columns, but binary image columns (as a source of raw image bytes has them)."""
    return pa.schema([(name, pa.binary() if name in ("image", "jpg") else pa.string()) for name in columns])


def _one_line_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args)
    message = str(err.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


# --- resolve_source / check_source -------------------------------------------------------------------------


def test_a_parquet_file(tmp_path):
    path = _write(tmp_path / "rows.parquet", _numbered(0, 3))
    resolved = check_source(SourceConfig(source=str(path)))
    assert resolved.parquet_files == [str(path)] and resolved.hub_id is None


def test_a_folder_of_parquet_files_nested(tmp_path):
    files = [_write(tmp_path / rel, _numbered(0, 2)) for rel in ("b.parquet", "a/x.parquet", "a/deep/er/y.parquet")]
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "a" / "rows.csv").write_text("url\n")
    resolved = check_source(SourceConfig(source=str(tmp_path)))
    assert resolved.hub_id is None
    assert sorted(resolved.parquet_files) == sorted(str(f) for f in files)
    assert resolved.parquet_files == sorted(resolved.parquet_files), "file order must be deterministic"


def test_a_glob(tmp_path):
    top = [_write(tmp_path / f"part-{i}.parquet", _numbered(0, 2)) for i in range(2)]
    nested = _write(tmp_path / "more" / "part-9.parquet", _numbered(0, 2))
    _write(tmp_path / "other.parquet", _numbered(0, 2))

    flat = resolve_source(SourceConfig(source=str(tmp_path / "part-*.parquet")))
    assert flat.parquet_files == sorted(str(f) for f in top)
    recursive = resolve_source(SourceConfig(source=str(tmp_path / "**" / "part-*.parquet")))
    assert sorted(recursive.parquet_files) == sorted(str(f) for f in top + [nested])


@pytest.mark.parametrize("name", ["missing.parquet", "missing_dir", "missing/deeper/dir"])
def test_a_missing_path_is_named(tmp_path, name):
    path = str(tmp_path / name)
    assert path in _one_line_error(resolve_source, SourceConfig(source=path))


@pytest.mark.parametrize("name", ["./no_such_dir", "../no_such_dir"])
def test_a_missing_relative_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, name):
    """`./x` and `../x` are paths; no Hub repo id can start with '.' or contain '..'."""
    monkeypatch.chdir(tmp_path)
    assert name in _one_line_error(resolve_source, SourceConfig(source=name))


def test_a_glob_matching_nothing_is_named(tmp_path):
    pattern = str(tmp_path / "*.parquet")
    assert pattern in _one_line_error(resolve_source, SourceConfig(source=pattern))


def test_a_folder_without_parquet_is_named(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.csv").write_text("url\nhttp://x\n")
    assert str(tmp_path) in _one_line_error(resolve_source, SourceConfig(source=str(tmp_path)))


@pytest.mark.parametrize("hub_id", ["org/name", "laion/laion2B-en", "name"])
def test_a_hub_id_that_is_not_a_local_path(tmp_path, monkeypatch, hub_id):
    monkeypatch.chdir(tmp_path)  # so that no local path of that name can exist
    resolved = check_source(SourceConfig(source=hub_id))
    assert resolved.hub_id == hub_id and resolved.parquet_files is None


def test_a_local_folder_wins_over_a_hub_id_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "org" / "name" / "rows.parquet", _numbered(0, 2))
    resolved = resolve_source(SourceConfig(source="org/name"))
    assert resolved.hub_id is None and [Path(f).resolve() for f in resolved.parquet_files] == [path.resolve()]


def test_no_source_is_the_bundled_sample():
    resolved = check_source(SourceConfig())
    assert resolved.parquet_files == [bundled_sample()]
    sample = Path(bundled_sample())
    assert sample.is_file() and sample.parent.name == "sample" and sample.parent.parent.name == "builder"
    meta = pq.ParquetFile(sample).metadata
    assert meta.num_rows >= 16 and meta.num_row_groups >= 2


# --- map_columns -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns,expected",
    [
        (["URL", "TEXT", "image", "WIDTH"], ("URL", "TEXT", "image")),
        (["hash", "url", "caption"], ("url", "caption", None)),
        (["url", "text"], ("url", "text", None)),
        (["text", "caption", "TEXT", "url"], ("url", "TEXT", None)),  # documented order: TEXT, caption, text
        (["caption", "text", "URL"], ("URL", "caption", None)),
        (["image", "caption"], (None, "caption", "image")),
    ],
)
def test_columns_are_auto_detected(columns, expected):
    mapping = map_columns(_schema(columns), SourceConfig(), "src")
    assert (mapping.url, mapping.text, mapping.image) == expected


def test_named_columns_win():
    columns = ["URL", "link", "TEXT", "alt", "image", "jpg"]
    mapping = map_columns(_schema(columns), SourceConfig(url_column="link", text_column="alt", image_column="jpg"), "src")
    assert (mapping.url, mapping.text, mapping.image) == ("link", "alt", "jpg")


@pytest.mark.parametrize("flag", ["url_column", "text_column", "image_column"])
def test_an_unknown_named_column_lists_the_columns(flag):
    columns = ["URL", "TEXT", "image", "punsafe"]
    message = _one_line_error(map_columns, _schema(columns), SourceConfig(**{flag: "nope"}), "my-source")
    assert f"--{flag}" in message and "nope" in message and "my-source" in message
    assert all(column in message for column in columns)


def test_no_url_and_no_image_column_is_an_error():
    message = _one_line_error(map_columns, _schema(["TEXT", "WIDTH"]), SourceConfig(), "my-source")
    assert "my-source" in message


def test_no_text_column_is_allowed():
    mapping = map_columns(_schema(["url", "WIDTH"]), SourceConfig(), "src")
    assert (mapping.url, mapping.text) == ("url", None)


def test_check_source_checks_the_columns_from_the_footer(tmp_path):
    path = _write(tmp_path / "rows.parquet", pa.table({"link": ["http://x"], "alt": ["y"]}))
    assert "link" in _one_line_error(check_source, SourceConfig(source=str(path), url_column="nope"))
    check_source(SourceConfig(source=str(path), url_column="link"))


# --- open_stream: columns ----------------------------------------------------------------------------------


def _rows(resolved, cfg, rows_per_task=1000):
    """Every task's rows, task after task: the whole source as the run reads it."""
    features, rows = None, []
    for task in plan_tasks(resolved, cfg, rows_per_task):
        features, stream = open_stream(resolved, cfg, task)
        rows += list(stream)
    return features, rows


def test_columns_are_renamed_passed_through_and_moved_aside(tmp_path):
    source = pa.table({
        "url": ["http://a.test/1.jpg", "http://a.test/2.jpg", "http://a.test/3.jpg"],
        "caption": ["one", None, "three"],
        "WIDTH": pa.array([640, 800, None], pa.int64()),
        "punsafe": pa.array([0.1, 0.25, 0.5], pa.float32()),
        "status": ["success", "success", "failed"],  # clash with generated columns
        "top_caption": ["old a", "old b", None],
    })
    path = _write(tmp_path / "rows.parquet", source)
    cfg = SourceConfig(source=str(path))
    features, rows = _rows(resolve_source(cfg), cfg)

    renamed = {"url": "URL", "caption": "TEXT", "status": "source_status", "top_caption": "source_top_caption"}
    source_features = Features.from_arrow_schema(source.schema)
    assert dict(features) == {renamed.get(name, name): feature for name, feature in source_features.items()}
    assert len(rows) == source.num_rows
    for i, row in enumerate(rows):
        assert {k: v for k, v in row.items() if k != "_row_key"} == {
            renamed.get(name, name): source.column(name)[i].as_py() for name in source.column_names
        }
        assert row["_row_key"] == source.column("url")[i].as_py()


def test_a_missing_text_column_becomes_all_null(tmp_path):
    urls = ["http://a.test/1.jpg", "http://a.test/2.jpg"]
    path = _write(tmp_path / "rows.parquet", pa.table({"URL": urls, "n": [1, 2]}))
    cfg = SourceConfig(source=str(path))
    features, rows = _rows(resolve_source(cfg), cfg)
    assert features["TEXT"] == Value("string")
    assert [row["TEXT"] for row in rows] == [None, None]
    assert [row["URL"] for row in rows] == urls and [row["_row_key"] for row in rows] == urls


def test_an_image_column_comes_back_undecoded_and_keys_rows_without_url(tmp_path):
    images = [_png("red"), _png("blue", (4, 4)), _png("green")]
    urls = ["http://a.test/1.jpg", None, ""]
    schema = Features({"url": Value("string"), "image": Image(), "caption": Value("string")}).arrow_schema
    table = pa.Table.from_pydict({"url": urls, "image": [{"bytes": b, "path": None} for b in images],
                                  "caption": ["a", "b", "c"]}, schema=schema)
    path = _write(tmp_path / "rows.parquet", table)
    cfg = SourceConfig(source=str(path))
    features, rows = _rows(resolve_source(cfg), cfg)

    assert features["image"] == Image()  # the output declares it as the source did: decodable by consumers
    assert [row["image"]["bytes"] for row in rows] == images  # dicts of bytes, not PIL images
    assert [row["_row_key"] for row in rows] == [hashlib.sha256(b).hexdigest() for b in images]  # URL or not


@pytest.mark.parametrize("missing", ["URL", "TEXT"])
def test_an_image_source_without_url_or_text_column_stays_undecoded(tmp_path, missing):
    """A source may lack the URL column (images only) or the alt-text column; the image column must still
    come back undecoded and rows without a URL keyed by their bytes."""
    images = [_png("red"), _png("white")]
    columns = {"link": (Value("string"), ["http://a.test/1.jpg", None]), "jpg": (Image(), None),
               "txt": (Value("string"), ["x", "y"])}
    del columns[{"URL": "link", "TEXT": "txt"}[missing]]
    schema = Features({name: feature for name, (feature, _) in columns.items()}).arrow_schema
    data = {name: values for name, (_, values) in columns.items()}
    data["jpg"] = [{"bytes": b, "path": None} for b in images]
    path = _write(tmp_path / "rows.parquet", pa.Table.from_pydict(data, schema=schema))
    cfg = SourceConfig(source=str(path), image_column="jpg", **({"url_column": "link"} if missing == "TEXT" else
                                                                {"text_column": "txt"}))
    features, rows = _rows(resolve_source(cfg), cfg)

    assert set(features) == {"URL", "TEXT", "image"}
    assert features["image"] == Image()
    urls = data.get("link", [None, None])
    assert [row["URL"] for row in rows] == urls
    assert [row["TEXT"] for row in rows] == data.get("txt", [None, None])
    assert [row["image"]["bytes"] for row in rows] == images
    assert [row["_row_key"] for row in rows] == [hashlib.sha256(b).hexdigest() for b in images]


# --- open_stream: tasks ---------------------------------------------------------------------------------------


def _single_file(tmp_path, num_rows, row_groups):
    path = _write(tmp_path / "one.parquet", _numbered(0, num_rows), row_group_size=num_rows // row_groups)
    assert pq.ParquetFile(path).metadata.num_row_groups == row_groups
    return str(path), list(range(num_rows))


def _three_files(tmp_path):
    sizes, start = (4, 5, 3), 0
    for i, size in enumerate(sizes):
        _write(tmp_path / "parts" / f"part-{i}.parquet", _numbered(start, start + size))
        start += size
    return str(tmp_path / "parts"), list(range(start))


def _per_task(source: str, rows_per_task: int, max_samples: int | None = None) -> list[list[int]]:
    cfg = SourceConfig(source=source, max_samples=max_samples)
    resolved = resolve_source(cfg)
    return [[row["n"] for row in open_stream(resolved, cfg, task)[1]]
            for task in plan_tasks(resolved, cfg, rows_per_task)]


@pytest.mark.parametrize(("layout", "rows_per_task"), [
    ("one row group", 7),  # tasks cut inside the row group
    ("four row groups", 4),  # a task per row group
    ("four row groups", 9),  # two whole row groups per task
    ("three files", 5),  # tasks across file boundaries
])
def test_tasks_stream_every_row_once_in_source_order(tmp_path, layout, rows_per_task):
    source, expected = {"one row group": lambda: _single_file(tmp_path, 16, 1),
                        "four row groups": lambda: _single_file(tmp_path, 16, 4),
                        "three files": lambda: _three_files(tmp_path)}[layout]()
    per_task = _per_task(source, rows_per_task)
    assert [n for rows in per_task for n in rows] == expected
    assert all(0 < len(rows) <= rows_per_task for rows in per_task)


@pytest.mark.parametrize("layout", ["single file", "three files"])
def test_max_samples_is_the_first_rows_whatever_the_task_size(tmp_path, layout):
    source, all_rows = _single_file(tmp_path, 16, 4) if layout == "single file" else _three_files(tmp_path)
    max_samples = 7  # crosses a row group / file boundary
    for rows_per_task in (1, 3, 100):
        assert [n for rows in _per_task(source, rows_per_task, max_samples) for n in rows] == all_rows[:max_samples]


@pytest.mark.parametrize(("layout", "rows_per_task"), [("one row group", 40), ("four row groups", 15),
                                                       ("three files", 12)])
def test_a_resumed_task_streams_exactly_the_rows_after_its_recorded_ones(tmp_path, layout, rows_per_task):
    source = {"one row group": lambda: _single_file(tmp_path, 40, 1)[0],
              "four row groups": lambda: _single_file(tmp_path, 40, 4)[0],
              "three files": lambda: _three_files(tmp_path)[0]}[layout]()
    cfg = SourceConfig(source=source)
    resolved = resolve_source(cfg)
    for task in plan_tasks(resolved, cfg, rows_per_task):
        own = [row["n"] for row in open_stream(resolved, cfg, task)[1]]
        for done in (1, len(own) // 2, len(own) - 1, len(own)):
            rest = [row["n"] for row in open_stream(resolved, cfg, task, skip=done)[1]]
            assert rest == own[done:], f"task {task.index} after {done} of its rows"


# --- bad sources: one line before any work, or every row kept -----------------------------------------------


def test_files_without_rows_are_left_out_and_a_source_without_any_is_named(tmp_path, caplog):
    good = _write(tmp_path / "src" / "a.parquet", _numbered(0, 3))
    _write(tmp_path / "src" / "b.parquet", _numbered(0, 0))  # 0 rows
    (tmp_path / "src" / "c.parquet").write_bytes(b"")  # 0 bytes: an interrupted copy
    resolved = check_source(SourceConfig(source=str(tmp_path / "src")))
    assert resolved.parquet_files == [str(good)] and resolved.rows == 3
    assert "b.parquet" in caplog.text and "c.parquet" in caplog.text
    cfg = SourceConfig(source=str(tmp_path / "src"))
    assert [row["n"] for row in _rows(resolved, cfg)[1]] == [0, 1, 2]

    empty = _write(tmp_path / "zero.parquet", _numbered(0, 0))
    assert "has no rows" in _one_line_error(check_source, SourceConfig(source=str(empty)))


def test_an_unreadable_file_among_good_ones_is_named(tmp_path):
    _write(tmp_path / "src" / "a.parquet", _numbered(0, 3))
    (tmp_path / "src" / "b.parquet").write_bytes(b"PAR1 truncated")
    assert "b.parquet" in _one_line_error(check_source, SourceConfig(source=str(tmp_path / "src")))


def test_files_with_other_columns_are_named(tmp_path):
    _write(tmp_path / "src" / "a.parquet", _numbered(0, 3))
    _write(tmp_path / "src" / "b.parquet", _numbered(3, 5).append_column("extra", pa.array([1, 2])))
    message = _one_line_error(check_source, SourceConfig(source=str(tmp_path / "src")))
    assert "b.parquet" in message and "'extra'" in message


def test_duplicate_column_names_are_named(tmp_path):
    table = _numbered(0, 2)
    duplicated = pa.Table.from_arrays([*table.columns, table.column("caption")], names=[*table.column_names, "caption"])
    message = _one_line_error(check_source, SourceConfig(source=str(_write(tmp_path / "d.parquet", duplicated))))
    assert "duplicate column names: caption" in message


def test_a_map_column_is_named_before_any_work(tmp_path):
    meta = pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64()))
    path = _write(tmp_path / "m.parquet", _numbered(0, 2).append_column("meta", pa.array([{"m": m} for m in
                                                                                          meta.to_pylist()],
                                                                                         pa.struct([("m", meta.type)]))))
    message = _one_line_error(check_source, SourceConfig(source=str(path)))
    assert "'meta'" in message and "map<" in message


@pytest.mark.parametrize("values", [["a.jpg", "b.jpg"], [1, 2]])
def test_an_image_column_that_holds_no_images(tmp_path, caplog, values):
    path = _write(tmp_path / "rows.parquet", _numbered(0, 2).append_column("image", pa.array(values)))
    named = _one_line_error(check_source, SourceConfig(source=str(path), image_column="image"))
    assert "--image_column 'image'" in named and str(pa.array(values).type) in named
    cfg = SourceConfig(source=str(path))  # found by its name only: passed through, the URLs are fetched
    resolved = check_source(cfg)
    assert "not image bytes" in caplog.text
    rows = _rows(resolved, cfg)[1]
    assert [row["image"] for row in rows] == values and [row["_row_key"] for row in rows] == [row["URL"] for row in rows]


def test_invalid_utf8_keeps_its_row_with_the_bad_bytes_replaced(tmp_path):
    captions = pa.array([b"fine", b"caf\xe9 \xff", None, b"ok"], pa.binary()).view(pa.string())  # unchecked bytes
    table = pa.table({"url": [f"http://img.test/{i}.jpg" for i in range(4)], "caption": captions, "n": [0, 1, 2, 3]})
    cfg = SourceConfig(source=str(_write(tmp_path / "rows.parquet", table)))
    rows = _rows(check_source(cfg), cfg)[1]
    assert [row["TEXT"] for row in rows] == ["fine", "caf\ufffd \ufffd", None, "ok"]
    assert [row["n"] for row in rows] == [0, 1, 2, 3]


# --- image columns written by `datasets`: never decoded or fetched on the way in ------------------------------


def test_an_image_feature_column_is_never_decoded_or_fetched(tmp_path, image_server):
    """`Dataset.cast_column("image", Image())`-written cells: corrupt bytes, a path that is a loopback URL (and
    no bytes), also in a second, nested image column; streaming must hand them over untouched."""
    import datasets

    path_url = image_server.url("/img/jpeg_rgb?stream=1")
    nested_url = image_server.url("/img/png_rgb?stream=2")
    good = _png("red")
    dataset = datasets.Dataset.from_dict({
        "url": ["http://img.test/0.jpg", "http://img.test/1.jpg", "http://img.test/2.jpg"],
        "image": [{"bytes": b"\xff\xd8 not a jpeg", "path": None}, {"bytes": None, "path": path_url},
                  {"bytes": good, "path": None}],
        "thumbs": [[{"bytes": None, "path": nested_url}], [], [{"bytes": good, "path": None}]],
    }, features=Features({"url": Value("string"), "image": Image(), "thumbs": datasets.List(Image())}))
    dataset.to_parquet(tmp_path / "rows.parquet")
    fetched = [image_server.count("/img/jpeg_rgb?stream=1"), image_server.count("/img/png_rgb?stream=2")]
    cfg = SourceConfig(source=str(tmp_path / "rows.parquet"))
    features, rows = _rows(check_source(cfg), cfg)
    assert [row["image"] for row in rows] == [{"bytes": b"\xff\xd8 not a jpeg", "path": None},
                                              {"bytes": None, "path": path_url}, {"bytes": good, "path": None}]
    assert rows[0]["thumbs"] == [{"bytes": None, "path": nested_url}]
    # (writing the source with `datasets` fetched them; streaming it must not, nor later stages' renames)
    assert [image_server.count("/img/jpeg_rgb?stream=1"), image_server.count("/img/png_rgb?stream=2")] == fetched
    assert features["image"] == Image() and features["thumbs"] == datasets.List(Image())  # as declared
    assert rows[0]["_row_key"] == hashlib.sha256(b"\xff\xd8 not a jpeg").hexdigest()


# --- a Hub source: tasks from its parquet files' footers, read by byte ranges ------------------------------------

HUB_TASKS = """
import json, sys
from builder.config import SourceConfig
from builder.source import check_source, open_stream, plan_tasks
cfg = SourceConfig(source=sys.argv[1])
resolved = check_source(cfg)
tasks = plan_tasks(resolved, cfg, 5)
print(json.dumps({"files": sorted({piece.file for task in tasks for piece in task.pieces}),
                  "tasks": [[row["n"] for row in open_stream(resolved, cfg, task)[1]] for task in tasks],
                  "resumed": [row["n"] for row in open_stream(resolved, cfg, tasks[1], skip=3)[1]]}))
"""


@pytest.mark.timeout(120)
def test_a_hub_source_is_cut_into_tasks_from_its_parquet_footers(hub_server, tmp_path):
    import json
    import subprocess
    import sys

    folder = tmp_path / "repo"
    _write(folder / "data" / "train-00000-of-00002.parquet", _numbered(0, 8), row_group_size=4)
    _write(folder / "data" / "train-00001-of-00002.parquet", _numbered(8, 14), row_group_size=6)
    hub_server.add_repo("user/rows", folder, repo_type="datasets")
    done = subprocess.run([sys.executable, "-c", HUB_TASKS, "user/rows"], cwd=Path(__file__).resolve().parents[2],
                          env=hub_server.env(), capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [len(rows) for rows in got["tasks"]] == [4, 4, 5, 1]  # whole row groups where they fit; 6 is cut
    assert [n for rows in got["tasks"] for n in rows] == list(range(14))
    assert got["resumed"] == got["tasks"][1][3:]
    assert all(file.startswith("hf://datasets/user/rows@") for file in got["files"]) and len(got["files"]) == 2

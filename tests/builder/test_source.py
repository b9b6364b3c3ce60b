"""The source: resolving paths / Hub ids, picking columns, and streaming this process's share of the rows."""

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, Image, Value
from PIL import Image as PILImage

from builder.config import ConfigError, SourceConfig
from builder.source import bundled_sample, check_source, map_columns, open_stream, resolve_source


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


def _rows(resolved, cfg, rank=0, world_size=1):
    features, rows = open_stream(resolved, cfg, rank, world_size)
    return features, list(rows)


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


# --- open_stream: the work split -----------------------------------------------------------------------------


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


def _per_rank(source: str, world_size: int, max_samples: int | None = None) -> list[list[int]]:
    cfg = SourceConfig(source=source, max_samples=max_samples)
    resolved = resolve_source(cfg)
    return [[row["n"] for row in open_stream(resolved, cfg, rank, world_size)[1]] for rank in range(world_size)]


def _check_split(per_rank: list[list[int]], expected: list[int]) -> None:
    everything = [n for rows in per_rank for n in rows]
    assert sorted(everything) == expected, "rows lost or duplicated"
    for rows in per_rank:
        assert rows == sorted(rows), "a rank's rows must keep source order"


def test_single_file_with_four_row_groups_on_two_ranks_gets_whole_row_groups(tmp_path):
    source, expected = _single_file(tmp_path, num_rows=16, row_groups=4)
    per_rank = _per_rank(source, world_size=2)
    _check_split(per_rank, expected)
    groups = [{n // 4 for n in rows} for rows in per_rank]
    assert all(len(rows) == 4 * len(g) for rows, g in zip(per_rank, groups)), "ranks must read whole row groups"
    assert all(len(g) == 2 for g in groups)


def test_three_files_on_two_ranks(tmp_path):
    source, expected = _three_files(tmp_path)
    _check_split(_per_rank(source, world_size=2), expected)


def test_two_row_groups_on_three_ranks(tmp_path):
    source, expected = _single_file(tmp_path, num_rows=10, row_groups=2)
    per_rank = _per_rank(source, world_size=3)
    _check_split(per_rank, expected)
    assert all(per_rank), "every rank gets work"


@pytest.mark.parametrize("layout", ["single file", "three files"])
def test_max_samples_is_the_first_rows_whatever_the_world_size(tmp_path, layout):
    source, all_rows = _single_file(tmp_path, 16, 4) if layout == "single file" else _three_files(tmp_path)
    max_samples = 7  # crosses a row group / file boundary
    for world_size in (1, 2, 3):
        _check_split(_per_rank(source, world_size, max_samples), all_rows[:max_samples])


# --- resume: a later .skip(n) skips n of this process's own rows ---------------------------------------------


@pytest.mark.parametrize(("layout", "world_size", "max_samples"), [
    ("one row group", 2, None),  # split row by row: the case that duplicated rows on resume
    ("one row group", 3, None),
    ("four row groups", 2, None),  # split by whole row groups
    ("three files", 2, None),  # 3 files on 2 processes: row groups, else row by row
    ("four row groups", 2, 13),  # --max_samples: row by row
])
def test_skipping_rows_skips_this_process_rows_whatever_the_split(tmp_path, layout, world_size, max_samples):
    source = {"one row group": lambda: _single_file(tmp_path, 40, 1)[0],
              "four row groups": lambda: _single_file(tmp_path, 40, 4)[0],
              "three files": lambda: _three_files(tmp_path)[0]}[layout]()
    cfg = SourceConfig(source=source, max_samples=max_samples)
    resolved = resolve_source(cfg)
    for rank in range(world_size):
        own = [row["n"] for row in open_stream(resolved, cfg, rank, world_size)[1]]
        for done in (1, len(own) - 1):
            rest = [row["n"] for row in open_stream(resolved, cfg, rank, world_size)[1].skip(done)]
            assert rest == own[done:], f"rank {rank} after {done} of its rows"


# --- bad sources: one line before any work, or every row kept -----------------------------------------------


def test_files_without_rows_are_left_out_and_a_source_without_any_is_named(tmp_path, caplog):
    good = _write(tmp_path / "src" / "a.parquet", _numbered(0, 3))
    _write(tmp_path / "src" / "b.parquet", _numbered(0, 0))  # 0 rows
    (tmp_path / "src" / "c.parquet").write_bytes(b"")  # 0 bytes: an interrupted copy
    resolved = check_source(SourceConfig(source=str(tmp_path / "src")))
    assert resolved.parquet_files == [str(good)] and resolved.rows == 3
    assert "b.parquet" in caplog.text and "c.parquet" in caplog.text
    cfg = SourceConfig(source=str(tmp_path / "src"))
    assert [row["n"] for row in open_stream(resolved, cfg, 0, 1)[1]] == [0, 1, 2]

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
    rows = list(open_stream(resolved, cfg, 0, 1)[1])
    assert [row["image"] for row in rows] == values and [row["_row_key"] for row in rows] == [row["URL"] for row in rows]


def test_invalid_utf8_keeps_its_row_with_the_bad_bytes_replaced(tmp_path):
    captions = pa.array([b"fine", b"caf\xe9 \xff", None, b"ok"], pa.binary()).view(pa.string())  # unchecked bytes
    table = pa.table({"url": [f"http://img.test/{i}.jpg" for i in range(4)], "caption": captions, "n": [0, 1, 2, 3]})
    cfg = SourceConfig(source=str(_write(tmp_path / "rows.parquet", table)))
    rows = list(open_stream(check_source(cfg), cfg, 0, 1)[1])
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
    features, stream = open_stream(check_source(cfg), cfg, 0, 1)
    rows = list(stream)
    assert [row["image"] for row in rows] == [{"bytes": b"\xff\xd8 not a jpeg", "path": None},
                                              {"bytes": None, "path": path_url}, {"bytes": good, "path": None}]
    assert rows[0]["thumbs"] == [{"bytes": None, "path": nested_url}]
    # (writing the source with `datasets` fetched them; streaming it must not, nor later stages' renames)
    assert [image_server.count("/img/jpeg_rgb?stream=1"), image_server.count("/img/png_rgb?stream=2")] == fetched
    assert features["image"] == Image() and features["thumbs"] == datasets.List(Image())  # as declared
    assert rows[0]["_row_key"] == hashlib.sha256(b"\xff\xd8 not a jpeg").hexdigest()

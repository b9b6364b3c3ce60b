"""Parquet output (DESIGN §3): the schema, numbered atomic chunks, and the merged run stats."""

import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, Image, Value

from builder.stats import RunStats, format_stats, merge_stats
from map_fns.status import DECODE_ERROR, FETCH_ERROR, INVALID_URL, NO_CAPTION, OK
from output.layout import chunk_path
from output.schema import output_features
from output.store import OutputStore
from output.writer import ChunkWriter, write_parquet_chunk

# DESIGN §3, in its order: the generated columns and their types
GENERATED = {
    "top_caption": pa.string(),
    "top_caption_raw": pa.string(),
    "all_captions": pa.list_(pa.string()),
    "all_similarities": pa.list_(pa.float64()),
    "rerank_similarities": pa.list_(pa.float64()),
    "status": pa.string(),
    "error": pa.string(),
    "image_width": pa.int32(),
    "image_height": pa.int32(),
    "punsafe_pred": pa.float64(),
    "aesthetic": pa.float64(),
    "candidates": pa.list_(pa.string()),
    "candidate_similarities": pa.list_(pa.float64()),
}

SOURCE_FEATURES = Features({
    "WIDTH": Value("int64"),
    "TEXT": Value("string"),
    "_row_key": Value("string"),
    "URL": Value("string"),
    "image": Image(decode=False),
    "source_status": Value("string"),
    "punsafe": Value("float32"),
})


# --- output_features -----------------------------------------------------------------------------------------


def test_url_and_text_lead_then_source_columns_then_exactly_the_generated_ones():
    features = output_features(SOURCE_FEATURES)
    source_rest = [name for name in SOURCE_FEATURES if name not in ("URL", "TEXT") and not name.startswith("_")]
    assert list(features) == ["URL", "TEXT", *source_rest, *GENERATED]
    schema = features.arrow_schema
    assert {name: schema.field(name).type for name in GENERATED} == GENERATED
    for name in ("URL", "TEXT", *source_rest):
        if name != "image":
            assert features[name] == SOURCE_FEATURES[name], f"{name} must pass through unchanged"


def test_internal_columns_are_dropped():
    features = output_features(Features({"URL": Value("string"), "TEXT": Value("string"),
                                         "_row_key": Value("string"), "_image": Value("binary")}))
    assert not [name for name in features if name.startswith("_")]


def test_an_undecoded_image_column_is_written_as_a_decoded_image():
    features = output_features(SOURCE_FEATURES)
    assert isinstance(features["image"], Image) and features["image"].decode
    assert features["image"] == Image()


# --- ChunkWriter -----------------------------------------------------------------------------------------------


def _batch(start: int, failed: bool) -> dict[str, list]:
    """Two rows numbered from `start`, as the last stage hands them over (internal `_` columns included)."""
    rows = range(start, start + 2)
    if failed:
        generated = {
            "top_caption": [None, None], "top_caption_raw": [None, None], "all_captions": [None, None],
            "all_similarities": [None, None], "rerank_similarities": [None, None],
            "status": [FETCH_ERROR, DECODE_ERROR], "error": ["HTTP 404", "not an image"],
            "image_width": [None, None], "image_height": [None, None], "punsafe_pred": [None, None],
            "aesthetic": [None, None], "candidates": [None, None], "candidate_similarities": [None, None],
        }
    else:
        generated = {
            "top_caption": [f"A caption {i}." for i in rows], "top_caption_raw": [f"a caption {i}" for i in rows],
            "all_captions": [[f"a caption {i}", f"another {i}"] for i in rows],
            "all_similarities": [[0.5 + i / 100, 0.25] for i in rows],
            "rerank_similarities": [[0.125, 0.5 - i / 100] for i in rows],
            "status": [OK, OK], "error": [None, None],
            "image_width": [100 + i for i in rows], "image_height": [200 + i for i in rows],
            "punsafe_pred": [0.125 + i / 100 for i in rows], "aesthetic": [5.5 + i / 10 for i in rows],
            "candidates": [[f"another {i}", f"a caption {i}", f"third {i}"] for i in rows],
            "candidate_similarities": [[0.25, 0.5 + i / 100, 0.125] for i in rows],
        }
    return {
        "URL": [f"http://img.test/{i}.jpg" for i in rows], "TEXT": [f"alt {i}" for i in rows],
        "WIDTH": [640 + i for i in rows], "image": [{"bytes": bytes([i]) * 3, "path": None} for i in rows],
        "source_status": ["success"] * 2, "punsafe": [0.5, 0.25], "_row_key": [f"k{i}" for i in rows],
        "_image": [object(), object()], **generated,
    }


def test_chunks_are_numbered_in_order_end_on_whole_batches_and_share_one_schema(tmp_path):
    features = output_features(SOURCE_FEATURES)
    task = 7
    reported = []

    def on_chunk(table):  # the progress record may only say so once the chunk is on disk
        assert chunk_path(tmp_path, task, 1 + len(reported)).exists()
        reported.append(table)

    writer = ChunkWriter(OutputStore(str(tmp_path)), task, features, rows_per_chunk=3, first_chunk=1, on_chunk=on_chunk)
    batches = [_batch(0, False), _batch(2, False), _batch(4, True), _batch(6, True)]  # 2 rows each
    for batch in batches:
        writer.add(batch)
    writer.close()

    paths = [tmp_path / "data" / f"train-{task:06d}-{chunk:05d}.parquet" for chunk in range(1, 3)]
    assert paths == [chunk_path(tmp_path, task, chunk) for chunk in range(1, 3)]
    assert sorted(os.listdir(tmp_path / "data")) == [p.name for p in paths], "temp or extra files left"
    assert writer.chunks_written == 3

    tables = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in tables] == [4, 4]  # 3 rows reached in the middle of a batch: the batch stays whole
    assert [t.num_rows for t in reported] == [4, 4]
    expected = {name: [v for b in batches for v in b[name]] for name in features}
    got = pa.concat_tables(tables).to_pydict()
    assert list(got) == list(features) and "_row_key" not in got
    for name in features:
        if name in ("punsafe",):
            assert got[name] == pytest.approx(expected[name])
        else:
            assert got[name] == expected[name], name
    assert set(got["status"][6:]) <= {FETCH_ERROR, DECODE_ERROR} and got["all_captions"][6:] == [None, None]

    schemas = [pq.read_schema(p) for p in paths]
    for path, schema in zip(paths, schemas):
        assert schema.equals(schemas[0], check_metadata=True), f"{path.name} differs from {paths[0].name}"
        # parquet names list items "element" where arrow says "item"; types and metadata are the same
        assert schema.equals(features.arrow_schema), path.name
        assert b"huggingface" in schema.metadata and schema.metadata == features.arrow_schema.metadata
        assert Features.from_arrow_schema(schema) == features


def test_chunks_are_zstd_with_a_page_index(tmp_path):
    features = output_features(SOURCE_FEATURES)
    writer = ChunkWriter(OutputStore(str(tmp_path)), 0, features, rows_per_chunk=2)
    writer.add(_batch(0, False))
    writer.add(_batch(2, True))
    writer.close()
    for chunk in range(2):
        meta = pq.ParquetFile(chunk_path(tmp_path, 0, chunk)).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                assert column.compression == "ZSTD", column.path_in_schema
                assert column.has_offset_index and column.has_column_index, column.path_in_schema


def test_an_exact_multiple_writes_no_empty_chunk(tmp_path):
    writer = ChunkWriter(OutputStore(str(tmp_path)), 0, output_features(SOURCE_FEATURES), rows_per_chunk=2)
    for start in (0, 2):
        writer.add(_batch(start, False))
    writer.close()
    assert sorted(os.listdir(tmp_path / "data")) == [chunk_path(tmp_path, 0, c).name for c in range(2)]


# --- write_parquet_chunk ---------------------------------------------------------------------------------------


def test_a_chunk_write_replaces_the_target_whole(tmp_path):
    target = tmp_path / "data" / "train-000000-00000.parquet"
    write_parquet_chunk(OutputStore(str(tmp_path)), "data/train-000000-00000.parquet", pa.table({"a": [1, 2]}))
    write_parquet_chunk(OutputStore(str(tmp_path)), "data/train-000000-00000.parquet", pa.table({"a": [3, 4, 5]}))
    assert pq.read_table(target).column("a").to_pylist() == [3, 4, 5]
    assert os.listdir(tmp_path / "data") == [target.name]


def test_a_failed_chunk_write_leaves_the_previous_chunk_intact(tmp_path):
    store = OutputStore(str(tmp_path))
    target = tmp_path / "data" / "train-000000-00000.parquet"
    write_parquet_chunk(store, "data/train-000000-00000.parquet", pa.table({"a": [1, 2]}))
    before = target.read_bytes()
    unwritable = pa.table({"a": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})  # no parquet type for it
    with pytest.raises(pa.ArrowException):
        write_parquet_chunk(store, "data/train-000000-00000.parquet", unwritable)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path / "data") == [target.name]


def test_a_failed_chunk_write_creates_no_chunk(tmp_path):
    (tmp_path / "data").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        write_parquet_chunk(OutputStore(str(tmp_path)), "data/train-000000-00000.parquet", pa.table({"a": [1]}))
    assert sorted(os.listdir(tmp_path)) == ["data"]


# --- stats -------------------------------------------------------------------------------------------------------


TASK_BATCHES = [
    [{"status": [OK, OK, FETCH_ERROR], "error": [None, None, "HTTP 404"]},
     {"status": [DECODE_ERROR, OK], "error": ["not an image", None]}],
    [{"status": [FETCH_ERROR, FETCH_ERROR, INVALID_URL, NO_CAPTION],
      "error": ["HTTP 404", "timed out", "empty URL", "all candidates empty"]}],
    [],  # a task whose rows were all carried over (--retry_failed)
]


def _task_stats() -> list[dict]:
    """One task's counters per list of batches, as their done markers hold them."""
    parts = []
    for batches in TASK_BATCHES:
        stats = RunStats()
        for batch in batches:
            stats.add(batch)
        parts.append(stats.to_dict())
    return parts


def test_merge_stats_sums_the_tasks_counters():
    merged = merge_stats(_task_stats())
    batches = [b for task in TASK_BATCHES for b in task]
    statuses = Counter(s for b in batches for s in b["status"])
    errors = Counter(f"{s}: {e}" for b in batches for s, e in zip(b["status"], b["error"]) if e)
    assert merged["rows"] == sum(len(b["status"]) for b in batches)
    assert merged["statuses"] == dict(statuses) and merged["errors"] == dict(errors)
    for counts in (merged["statuses"], merged["errors"]):
        assert list(counts.values()) == sorted(counts.values(), reverse=True), "most common first"


def test_format_stats_mentions_every_status_and_error():
    merged = merge_stats(_task_stats())
    text = format_stats(merged)
    assert str(merged["rows"]) in text.splitlines()[0]
    for status, count in merged["statuses"].items():
        assert any(status in line and str(count) in line for line in text.splitlines()), status
    for reason in merged["errors"]:
        assert reason in text

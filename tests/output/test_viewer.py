"""The viewer rules checked before a push (DESIGN §3, §5), on real parquet files and a real card."""

import shutil
from pathlib import Path

import build

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, Image, Value
from huggingface_hub import DatasetCard

from builder.card_inputs import card_inputs
from builder.config import parse_config
from builder.source import check_source
from dataset_card.card import write_card
from output.layout import chunk_name, chunk_path
from output.schema import output_features
from output.viewer import MAX_ROW_GROUP_BYTES, ViewerCheckError, check_viewer_ready, chunk_files_problem
from output.reader import local_chunks
from output.store import OutputStore
from output.writer import ROW_GROUP_TARGET_BYTES, write_parquet_chunk

SOURCE = Features({"URL": Value("string"), "TEXT": Value("string"), "image": Image(), "punsafe": Value("float32")})
IMAGE_BYTES = b"\x89PNG" + bytes(range(256)) * 256  # big enough that the writer keeps no min/max for it
STATS = {"rows": 3, "statuses": {"ok": 2, "fetch_error": 1}, "errors": {"timeout": 1}, "stage_seconds": {},
         "reused_rows": 0, "worker_seconds": 1.5}


def output_table(features: Features = output_features(SOURCE), **values) -> pa.Table:
    row = {"URL": "http://127.0.0.1/a.png", "TEXT": "a cat", "image": {"bytes": IMAGE_BYTES, "path": None},
           "punsafe": 0.1, "top_caption": "a cat on a mat", "top_caption_raw": "a cat on a mat",
           "all_captions": ["a cat on a mat", "a cat"], "all_similarities": [0.3, 0.2],
           "rerank_similarities": [0.4, 0.1], "status": "ok", "error": None, "image_width": 4, "image_height": 3}
    return pa.Table.from_pylist([{**row, **values}] * 3, schema=features.arrow_schema)


def good_output(output_dir: Path, chunks: int = 2) -> Path:
    """What the builder leaves: chunks from the project's writer, a card from the project's renderer."""
    (output_dir / "data").mkdir(parents=True)
    for chunk in range(chunks):
        write_parquet_chunk(OutputStore(str(output_dir)), chunk_name(0, chunk), output_table())
    cfg = parse_config(["--output_dir", str(output_dir)])
    write_card(output_dir, local_chunks(output_dir), card_inputs(cfg, check_source(cfg.source)), STATS)
    return output_dir


def problems(output_dir: Path, **limits) -> list[str]:
    """The message's lines, summary first."""
    with pytest.raises(ViewerCheckError) as raised:
        check_viewer_ready(output_dir, **limits)
    return str(raised.value).splitlines()


def test_the_builders_own_output_passes_and_hidden_temp_files_are_ignored(tmp_path):
    output_dir = good_output(tmp_path / "out")
    (output_dir / "data" / ".train-000000-00002.parquet.tmp").write_bytes(b"half a file")
    check_viewer_ready(output_dir)


def test_a_file_with_another_schema_is_named_with_what_differs(tmp_path):
    output_dir = good_output(tmp_path / "out")
    table = output_table()
    odd = table.cast(table.schema.set(table.schema.get_field_index("image_width"), pa.field("image_width", pa.int64())))
    pq.write_table(odd, chunk_path(output_dir, 1, 0), write_page_index=True)
    summary, line = problems(output_dir)
    assert summary.endswith("is not ready for the Hub viewer: 1 problem")
    assert line.startswith("schema differs from data/train-000000-00000.parquet: "
                           "column types image_width int64 (not int32)")
    assert line.endswith(": data/train-000001-00000.parquet")


def test_an_oversized_row_group_is_named_by_file_and_index(tmp_path):
    output_dir = good_output(tmp_path / "out", chunks=1)
    size = pq.ParquetFile(chunk_path(output_dir, 0, 0)).metadata.row_group(0).total_byte_size
    check_viewer_ready(output_dir, max_row_group_bytes=size)
    _, line = problems(output_dir, max_row_group_bytes=size - 1)
    assert line == (f"row groups over {size - 1:,} bytes uncompressed: "
                    f"data/train-000000-00000.parquet row group 0 ({size:,} bytes)")


def test_the_default_limits_are_the_viewers_and_the_writer_stays_under_them():
    assert MAX_ROW_GROUP_BYTES == 100 * 2**20
    assert ROW_GROUP_TARGET_BYTES < MAX_ROW_GROUP_BYTES
    assert check_viewer_ready.__kwdefaults__["max_files_per_folder"] == 10_000


def test_a_file_without_page_index_is_rejected(tmp_path):
    output_dir = good_output(tmp_path / "out")
    pq.write_table(output_table(), chunk_path(output_dir, 1, 0), compression="zstd")  # pyarrow's default: none
    assert problems(output_dir)[1:] == [
        "column chunks without a page index (offset index): data/train-000001-00000.parquet"]


def test_too_many_files_in_a_pushed_folder_are_rejected(tmp_path):
    output_dir = good_output(tmp_path / "out", chunks=2)
    shutil.rmtree(output_dir / "plots")  # the card's own plots: start from a known count
    (output_dir / "plots").mkdir()
    for name in ("a.png", "b.png", "c.png", ".hidden"):
        (output_dir / "plots" / name).write_bytes(b"png")
    check_viewer_ready(output_dir, max_files_per_folder=3)
    assert problems(output_dir, max_files_per_folder=2)[1:] == ["more than 2 files in one folder: plots/ (3 files)"]


def test_url_stored_as_an_image_feature_is_rejected(tmp_path):
    output_dir = good_output(tmp_path / "out", chunks=0)
    features = output_features(Features({**SOURCE, "URL": Image()}))
    table = output_table(features, URL={"bytes": None, "path": "http://127.0.0.1/a.png"})
    pq.write_table(table, chunk_path(output_dir, 0, 0), write_page_index=True)
    assert problems(output_dir)[1:] == ["URL is not a plain string column (an Image of external URLs breaks the "
                                        "viewer): data/train-000000-00000.parquet"]


def test_broken_card_yaml_is_rejected(tmp_path):
    output_dir = good_output(tmp_path / "out")
    (output_dir / "README.md").write_text("---\nconfigs: [\n---\n# card\n")
    [line] = problems(output_dir)[1:]
    assert line.startswith("README.md YAML is not valid: ")


def _card_with_train_glob(output_dir: Path, glob: str) -> None:
    """Give the card a `configs` entry (ours have none; a user may add one) whose train split is `glob`."""
    card = DatasetCard.load(output_dir / "README.md")
    card.data["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": glob}]}]
    card.save(output_dir / "README.md")


@pytest.mark.parametrize("glob", ["data/train-*", "data/*.parquet", "data/**", "**/*.parquet", "*/train-*"])
def test_a_card_whose_train_glob_covers_the_data_files_passes(tmp_path, glob):
    output_dir = good_output(tmp_path / "out", chunks=1)
    _card_with_train_glob(output_dir, glob)
    check_viewer_ready(output_dir)


@pytest.mark.parametrize("glob", ["train-*", "*", "data/train-?", "data/*/*.parquet"])
def test_a_card_whose_train_glob_misses_the_data_files_is_rejected(tmp_path, glob):
    output_dir = good_output(tmp_path / "out", chunks=1)
    _card_with_train_glob(output_dir, glob)
    assert problems(output_dir)[1:] == [
        f"README.md config 'default' train data_files ['{glob}'] do not match: data/train-000000-00000.parquet"]


def test_without_configs_every_data_file_must_be_train_by_name_and_nothing_else_a_split(tmp_path):
    output_dir = good_output(tmp_path / "out", chunks=1)
    assert "configs" not in DatasetCard.load(output_dir / "README.md").data
    write_parquet_chunk(OutputStore(str(output_dir)), "data/extra-00000.parquet", output_table())
    (output_dir / "plots" / "validation-notes.png").write_bytes(b"\x89PNG")
    assert problems(output_dir)[1:] == [
        "README.md has no configs, and these names do not make the file part of the train split: "
        "data/extra-00000.parquet",
        "README.md has no configs, and these names make a validation split: plots/validation-notes.png"]


def test_a_problem_in_many_files_names_the_first_twenty_and_counts_the_rest(tmp_path):
    output_dir = good_output(tmp_path / "out", chunks=0)
    for chunk in range(23):
        pq.write_table(output_table(), chunk_path(output_dir, 0, chunk))
    [line] = problems(output_dir)[1:]
    assert line.endswith("data/train-000000-00019.parquet and 3 more")
    assert line.count("data/train-") == 20


def test_every_problem_is_listed_at_once(tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "data").mkdir(parents=True)
    pq.write_table(output_table(), chunk_path(output_dir, 0, 0))
    pq.write_table(output_table().drop_columns(["punsafe"]), chunk_path(output_dir, 1, 0), write_page_index=True)
    summary, *lines = problems(output_dir)
    assert summary == f"{output_dir} is not ready for the Hub viewer: 3 problems"
    assert lines == [
        "column chunks without a page index (offset index): data/train-000000-00000.parquet",
        "schema differs from data/train-000000-00000.parquet: missing columns punsafe: data/train-000001-00000.parquet",
        "README.md is missing",
    ]


def test_an_empty_output_is_rejected(tmp_path):
    assert problems(tmp_path)[1:] == ["no data files (data/*.parquet)", "README.md is missing"]


@pytest.mark.parametrize("task_rows, rows_per_chunk, batch_size", [
    ([10_000], 1, 1), ([20_000], 1, 2), ([10_000] * 4, 4, 4), ([20_000] * 500, 10_000, 64)])
def test_a_run_whose_chunks_fit_in_one_folder_passes(task_rows, rows_per_chunk, batch_size):
    assert chunk_files_problem(task_rows, rows_per_chunk, batch_size) is None


@pytest.mark.parametrize("task_rows, rows_per_chunk, batch_size, files", [
    ([10_001], 1, 1, 10_001), ([20_001], 1, 2, 10_001), ([20_000] * 600, 1_000, 64, 12_000)])
def test_too_many_chunk_files_are_named_with_a_chunk_size_that_fits(task_rows, rows_per_chunk, batch_size, files):
    problem = chunk_files_problem(task_rows, rows_per_chunk, batch_size)
    assert f"make about {files:,} files in data/, over the Hub's 10,000 per folder" in problem
    enough = int(problem.rsplit("--rows_per_chunk ", 1)[1].split()[0].replace(",", ""))
    assert chunk_files_problem(task_rows, enough, batch_size) is None
    assert chunk_files_problem(task_rows, enough - batch_size, batch_size) is not None  # and a batch less would not


def test_more_tasks_than_files_in_a_folder_are_named_with_a_task_size_that_fits():
    problem = chunk_files_problem([1_000] * 10_001, 10_000, 64)
    assert problem.endswith("use --rows_per_task 1,001 or more")  # 10,001,000 rows in at most 10,000 tasks


def test_a_push_that_would_make_too_many_files_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"URL": [f"http://127.0.0.1/{i}.png" for i in range(30_001)]}), source)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    argv = ["--source", str(source), "--output_dir", str(tmp_path / "out"), "--rows_per_chunk", "1",
            "--batch_size", "1", "--push_to_hub", "user/many"]
    assert build.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "error: 30,001 rows in 2 tasks, in chunks of --rows_per_chunk 1, make about 30,001 files in data/, over the "
        "Hub's 10,000 per folder: use --rows_per_chunk 4 or more")
    assert not (tmp_path / "out").exists()

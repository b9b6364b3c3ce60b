"""The whole builder through `accelerate launch` with 2 CPU workers, tiny models, and bad rows mixed in."""

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]

FLAKY_KEY = "e2e-retry"  # the server fails this URL's first request only
CORRUPT = b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG"


def _rows(server, samples):
    """(URL, embedded image bytes or None, TEXT, the status that row must end with)."""
    good = samples["jpeg_rgb"].data
    return [
        ("https://example.invalid/a.jpg", samples["png_rgba"].data, "embedded png", "ok"),
        ("https://example.invalid/b.jpg", CORRUPT, "corrupt embedded bytes", "decode_error"),
        ("", None, "empty url, no bytes", "invalid_url"),
        ("https://example.invalid/c.jpg", samples["webp"].data, None, "ok"),  # null TEXT
        (server.url("/img/jpeg_rgb"), None, "fetched from loopback", "ok"),
        (server.url("/404"), None, "dead link", "fetch_error"),
        ("ftp://example.invalid/x.jpg", None, "wrong scheme", "invalid_url"),
        ("https://example.invalid/d.jpg", good, "embedded jpeg", "ok"),
        (server.url("/html"), None, "html page", "decode_error"),
        ("https://example.invalid/e.jpg", samples["gif_animated"].data, "gif", "ok"),
        ("http://169.254.169.254/latest/meta-data/", None, "cloud metadata", "blocked"),
        (server.url("/robots?tag=noai"), None, "opted out", "opted_out"),
        (server.url(f"/flaky-503?key={FLAKY_KEY}&fails=1"), None, "down once, then up", "fetch_error"),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory, image_server, sample_images, tiny_models):
    rows = _rows(image_server, sample_images)
    source = tmp_path_factory.mktemp("source") / "mixed.parquet"
    table = pa.table({
        "url": [r[0] for r in rows],
        "caption": [r[2] for r in rows],
        "image": pa.array([r[1] for r in rows], pa.binary()),
        "row_id": list(range(len(rows))),
    })
    pq.write_table(table, source, row_group_size=len(rows) // 2 + 1)  # 2 row groups: 2 tasks
    output = tmp_path_factory.mktemp("out")
    cache_dir = Path(tiny_models.captioner).parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
         "build.py", "--preset", "tiny", "--cache_dir", str(cache_dir), "--source", str(source),
         "--output_dir", str(output), "--batch_size", "3", "--allow_networks", "127.0.0.0/8",
         "--fetch_retries", "0", "--rows_per_task", str(len(rows) // 2 + 1)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return rows, output, proc




@pytest.mark.timeout(300)
def test_two_workers_wrote_every_row_once_in_files_named_by_task(built):
    rows, output, _ = built
    files = sorted(p.name for p in (output / "data").glob("*.parquet"))
    assert files == ["train-000000-00000.parquet", "train-000001-00000.parquet"]
    assert sorted(p.name for p in (output / "tasks" / "done").iterdir()) == ["000000.json", "000001.json"]
    ids = [i for f in (output / "data").glob("*.parquet") for i in pq.read_table(f)["row_id"].to_pylist()]
    assert sorted(ids) == list(range(len(rows)))


def test_every_row_has_the_status_its_input_deserves(built, tmp_path):
    rows, output, _ = built
    out = datasets.load_dataset(str(output), split="train", cache_dir=str(tmp_path))  # no stale cache
    by_id = {r["row_id"]: r for r in out}
    for row_id, (url, _, text, status) in enumerate(rows):
        got = by_id[row_id]
        assert (got["URL"], got["TEXT"], got["status"]) == (url, text, status), got["error"]
        if status == "ok":
            assert got["error"] is None and got["top_caption"] and got["top_caption_raw"]
            assert 1 <= len(got["all_captions"]) <= 5
            assert len(got["all_similarities"]) == len(got["rerank_similarities"]) == len(got["all_captions"])
            assert got["all_similarities"] == sorted(got["all_similarities"], reverse=True)
            assert got["top_caption_raw"] in got["all_captions"]
            assert got["image_width"] > 0 and got["image_height"] > 0
        else:
            assert got["error"] and got["top_caption"] is None and got["all_captions"] is None


def test_output_schema_and_card_follow_the_design(built):
    _, output, proc = built
    schemas = {pq.read_schema(f) for f in (output / "data").glob("*.parquet")}
    assert len(schemas) == 1
    schema = schemas.pop()
    assert schema.names == ["URL", "TEXT", "image", "row_id", "top_caption", "top_caption_raw", "all_captions",
                            "all_similarities", "rerank_similarities", "status", "error", "image_width",
                            "image_height", "candidates", "candidate_similarities"]
    assert schema.field("all_similarities").type == pa.list_(pa.float64())
    assert schema.field("image_width").type == pa.int32()
    card = (output / "README.md").read_text()
    card_data = DatasetCard.load(output / "README.md").data
    assert card_data.dataset_info["features"] and "configs" not in card_data  # train split by file names
    assert "captions are noise" not in card
    assert "Captions are noise" in proc.stderr  # the tiny preset says so loudly
    assert (output / "build_config.yaml").exists()


@pytest.mark.timeout(300)
def test_retry_failed_refetches_only_fetch_errors_and_carries_the_rest(built, tiny_models, tmp_path):
    rows, output, _ = built
    retried = tmp_path / "retried"
    proc = subprocess.run(
        [sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--retry_failed", str(output), "--output_dir", str(retried), "--allow_networks", "127.0.0.0/8"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {r["row_id"]: r for f in (output / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    after = {r["row_id"]: r for f in (retried / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert sorted(after) == sorted(before)
    for row_id, row in before.items():
        if row["status"] == "fetch_error" and "flaky" in row["URL"]:
            assert after[row_id]["status"] == "ok" and after[row_id]["top_caption"]  # up now: retried, captioned
        elif row["status"] == "fetch_error":
            assert after[row_id]["status"] == "fetch_error"  # the 404 is retried and still fails
        else:
            assert after[row_id] == row  # carried over untouched

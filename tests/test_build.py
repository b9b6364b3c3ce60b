"""The whole builder through `accelerate launch` with 2 CPU workers, tiny models, and bad rows mixed in."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from map_fns.fetch import FetchConfig, make_fetch_fn
from map_fns.screen import ScreenConfig, make_screen_fn

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
        (server.url(LISTED_URL_PATH), None, "listed URL", "blocked_by_list"),
        (server.url(LISTED_BYTES_PATH), None, "listed image bytes, downloaded", "blocked_by_list"),
        ("https://example.invalid/f.jpg", samples["png_l"].data, "listed image bytes, embedded", "blocked_by_list"),
        ("https://example.invalid/g.jpg", samples["bmp"].data, "unsafe by the source's punsafe", "filtered"),
    ]


LISTED_URL_PATH, LISTED_BYTES_PATH = "/img/png_rgb?listed-url", "/img/png_p?listed-bytes"
SOURCE_UNSAFE = "unsafe by the source's punsafe"  # the row whose punsafe is over --max_punsafe


def _blocklist(folder: Path, server, samples) -> Path:
    """A list in the forms published lists use: a URL, an MD5 and a SHA-256 of image bytes."""
    path = folder / "csam-hashes.txt"
    path.write_text(f"# test list\n{server.url(LISTED_URL_PATH)}\n{hashlib.md5(samples['png_p'].data).hexdigest()}\n"
                    f"{hashlib.sha256(samples['png_l'].data).hexdigest().upper()}\n")
    return path


def _threshold_and_statuses(rows, tiny_models) -> tuple[float, list[str]]:
    """A --max_punsafe_pred with some of the ok rows' images above it and some below, and every row's status under
    it: their images are scored here first, by the product's own fetch and screen stages."""
    fetch = make_fetch_fn(FetchConfig(allow_networks="127.0.0.0/8", fetch_retries=0))
    ok = [i for i, row in enumerate(rows) if row[3] == "ok"]
    fetched = fetch({"URL": [rows[i][0] for i in ok], "image": [rows[i][1] for i in ok]})
    screen = make_screen_fn(ScreenConfig(screen_clip=tiny_models.ranker, punsafe_head=tiny_models.punsafe_head,
                                         aesthetic_head="none"), "cpu")
    scores = screen({**fetched, "_image": fetched["_image"]})["punsafe_pred"]
    ranked = sorted(set(scores))
    low, high = max(zip(ranked, ranked[1:]), key=lambda pair: pair[1] - pair[0])  # the widest gap between scores
    assert high - low > 1e-4, "the images' scores must differ by more than the processes' rounding"
    threshold = (low + high) / 2
    statuses = [row[3] for row in rows]
    for i, score in zip(ok, scores):
        statuses[i] = "filtered" if score > threshold else "ok"
    return threshold, statuses


@pytest.fixture(scope="module")
def built(tmp_path_factory, image_server, sample_images, tiny_models):
    rows = _rows(image_server, sample_images)
    threshold, statuses = _threshold_and_statuses(rows, tiny_models)
    rows = [(url, image, text, status) for (url, image, text, _), status in zip(rows, statuses)]
    source = tmp_path_factory.mktemp("source") / "mixed.parquet"
    blocklist = _blocklist(source.parent, image_server, sample_images)
    table = pa.table({
        "url": [r[0] for r in rows],
        "caption": [r[2] for r in rows],
        "image": pa.array([r[1] for r in rows], pa.binary()),
        "row_id": list(range(len(rows))),
        "punsafe": [0.9 if r[2] == SOURCE_UNSAFE else 0.1 for r in rows],
    })
    pq.write_table(table, source, row_group_size=len(rows) // 2 + 1)  # 2 row groups: 2 tasks
    output = tmp_path_factory.mktemp("out")
    cache_dir = Path(tiny_models.captioner).parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
         "build.py", "--preset", "tiny", "--cache_dir", str(cache_dir), "--source", str(source),
         "--output_dir", str(output), "--batch_size", "3", "--allow_networks", "127.0.0.0/8",
         "--fetch_retries", "0", "--rows_per_task", str(len(rows) // 2 + 1), "--blocklist", str(blocklist),
         "--max_punsafe", "0.5", "--max_punsafe_pred", str(threshold)],
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
    assert schema.names == ["URL", "TEXT", "image", "row_id", "punsafe", "top_caption", "top_caption_raw",
                            "all_captions", "all_similarities", "rerank_similarities", "status", "error",
                            "image_width", "image_height", "punsafe_pred", "aesthetic", "candidates",
                            "candidate_similarities"]
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


def test_what_was_kept_out_was_never_fetched_stored_captioned_or_shown(built, image_server, sample_images, tmp_path):
    rows, output, _ = built
    got = {r["row_id"]: r for f in (output / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    kept_out = [i for i, row in enumerate(rows) if row[3] in ("blocked_by_list", "filtered")]
    by_pred = [i for i in kept_out if rows[i][2] not in (SOURCE_UNSAFE,) and rows[i][3] == "filtered"]
    assert len(kept_out) == 4 + len(by_pred) and by_pred  # three listed, one by the source's score, some by ours
    assert image_server.count(LISTED_URL_PATH) == 0  # a listed URL is never requested
    assert image_server.count(LISTED_BYTES_PATH) == 1  # listed bytes: downloaded once, never again
    for i in kept_out:
        row = got[i]
        assert row["image"] is None  # embedded bytes are not stored either
        assert row["top_caption"] is None and row["all_captions"] is None
        assert (row["image_width"] is None) == (i not in by_pred)  # only our own score needed the image decoded
        assert "\n" not in row["error"]
    error = {rows[i][2]: got[i]["error"] for i in kept_out}
    assert error["listed URL"] == "URL listed in csam-hashes.txt"
    assert error["listed image bytes, downloaded"] == "image MD5 listed in csam-hashes.txt"
    assert error["listed image bytes, embedded"] == "image SHA-256 listed in csam-hashes.txt"
    assert error[SOURCE_UNSAFE] == "punsafe 0.9 fails filter punsafe<=0.5"
    assert all(got[i]["error"].startswith("punsafe_pred ") and got[i]["punsafe_pred"] is not None for i in by_pred)
    ok = [row for row in got.values() if row["status"] == "ok"]
    assert ok and all(row["punsafe_pred"] is not None and row["aesthetic"] is not None for row in ok)
    assert all(row["image"] is not None for row in ok if row["URL"].startswith("https://example.invalid"))

    card = (output / "README.md").read_text()
    listed = hashlib.sha256(_blocklist(tmp_path, image_server, sample_images).read_bytes()).hexdigest()
    assert "| `blocked_by_list` | 3 |" in card and f"| `filtered` | {1 + len(by_pred)} |" in card
    assert f"| `csam-hashes.txt` | 3 | `{listed}` |" in card
    assert "`punsafe<=0.5`" in card and "were not captioned" in card
    shown = card + (output / "gallery.html").read_text()
    for i in kept_out:  # neither the card's examples nor the gallery show a kept-out row
        assert not [text for text in (rows[i][0], rows[i][2]) if text and text in shown]

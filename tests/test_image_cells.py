"""A source written by `datasets` itself (its image column carries the `Image` feature), built with
`accelerate launch` on 2 processes: corrupt bytes, cells whose path is a URL (allowed, or not), a local file,
and one URL standing for four different embedded images. `datasets` must neither decode nor fetch any cell."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]
SHARED_URL = "https://example.invalid/one-url-for-four-images.jpg"


def _png(color: tuple[int, int, int], size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _rows(server, local_png: Path) -> list[tuple[str, dict, str]]:
    """(URL column, image cell, the status the row must end with)."""
    return [
        ("https://example.invalid/corrupt.jpg", {"bytes": b"\xff\xd8\xff\xe0 not the rest of a JPEG", "path": None},
         "decode_error"),
        ("https://example.invalid/blocked.jpg",  # only 127.0.0.1 is allowed
         {"bytes": None, "path": server.url_at("127.0.0.2", "/img/png_rgb?cell=2")}, "blocked"),
        ("https://example.invalid/unused.jpg", {"bytes": None, "path": server.url("/img/jpeg_rgb?cell=1")}, "ok"),
        ("https://example.invalid/local.png", {"bytes": None, "path": str(local_png)}, "ok"),
        *[(SHARED_URL, {"bytes": _png(color), "path": None}, "ok")
          for color in ((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20))],
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory, image_server, tiny_models):
    folder = tmp_path_factory.mktemp("image-cells")
    local_png = folder / "on-disk.png"
    local_png.write_bytes(_png((90, 90, 90), (50, 20)))
    rows = _rows(image_server, local_png)
    source = folder / "source.parquet"
    dataset = datasets.Dataset.from_dict({"url": [url for url, _, _ in rows],
                                          "caption": [f"row {i}" for i in range(len(rows))],
                                          "image": [cell for _, cell, _ in rows], "row_id": list(range(len(rows)))})
    dataset.cast_column("image", datasets.Image()).to_parquet(source)  # as a user's `datasets` code writes it
    assert pq.read_schema(source).metadata[b"huggingface"].count(b'"Image"') == 1
    seen = [image_server.count("/img/png_rgb?cell=2"), image_server.count("/img/jpeg_rgb?cell=1")]
    output = folder / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
         "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--source", str(source), "--output_dir", str(output), "--batch_size", "2",
         "--allow_networks", "127.0.0.1/32", "--fetch_retries", "0", "--gallery_rows", "0"],  # the gallery fetches too
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fetched = [image_server.count(path) - before for path, before in zip(("/img/png_rgb?cell=2", "/img/jpeg_rgb?cell=1"),
                                                                         seen)]
    by_id = {row["row_id"]: row for path in sorted((output / "data").glob("*.parquet"))
             for row in pq.read_table(path).to_pylist()}
    return rows, by_id, fetched, output


@pytest.mark.timeout(300)
def test_every_cell_gets_the_status_the_fetch_stage_gives_it(built):
    rows, by_id, fetched, _ = built
    assert sorted(by_id) == list(range(len(rows)))
    for row_id, (url, cell, status) in enumerate(rows):
        got = by_id[row_id]
        assert (got["URL"], got["status"]) == (url, status), got["error"]
        assert got["image"] == cell  # passed through as the source had it
    assert "127.0.0.2" in by_id[1]["error"]
    assert fetched == [0, 1]  # the blocked cell never reached the server; the allowed one once, by us
    assert (by_id[3]["image_width"], by_id[3]["image_height"]) == (50, 20)  # the local file was read


def test_one_url_with_different_images_gets_each_image_its_own_captions(built):
    rows, by_id, _, output = built
    shared = [by_id[row_id] for row_id, (url, _, _) in enumerate(rows) if url == SHARED_URL]
    assert len(shared) == 4 and all(row["status"] == "ok" for row in shared)
    assert len({tuple(row["all_similarities"]) for row in shared}) == 4  # scored against their own image
    reused = json.loads((output / "stats.json").read_text())["reused_rows"]
    assert reused == 0  # none counted as a repeat of another

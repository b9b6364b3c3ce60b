"""Outputs the card and gallery tests read: one real tiny build of the bundled sample (embedded images), and
a small URL-sourced output pointing at the loopback image server."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, Value

from builder.card_inputs import card_inputs
from builder.config import parse_config
from builder.source import check_source
from builder.stats import RunStats, merge_stats
from dataset_card.inputs import CardInputs
from output.layout import STATS_FILE, chunk_name
from output.reader import OutputChunk, local_chunks
from output.schema import output_features
from output.store import OutputStore
from output.writer import write_parquet_chunk

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
LOOPBACK_GALLERY = ("--allow_networks", "127.0.0.0/8", "--fetch_retries", "0", "--gallery_rows", "10")
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)> a | b *c* [d](e)'


@dataclass
class Output:
    path: Path
    inputs: CardInputs  # what the run hands the card and gallery
    stats: dict  # merge_stats(...) of the run

    @property
    def chunks(self) -> list[OutputChunk]:
        return local_chunks(self.path)

    @property
    def config(self) -> dict:
        """BuildConfig.to_dict() of the run."""
        return self.inputs.config

    def table(self, columns=None):
        return pq.read_table(sorted((self.path / "data").glob("*.parquet")), columns=columns)


def run_inputs(output_dir: str | Path, *flags: str) -> CardInputs:
    """What a run with `flags` into `output_dir` hands the card and gallery."""
    cfg = parse_config(["--output_dir", str(output_dir), *flags])
    return card_inputs(cfg, check_source(cfg.source))


@pytest.fixture(scope="session")
def built(tmp_path_factory, tiny_models) -> Output:
    """`build.py --preset tiny` on 8 rows of the bundled sample; the run writes its own card at the end."""
    output = tmp_path_factory.mktemp("built")
    flags = ["--preset", "tiny", "--max_samples", "8", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
             "--license", "cc-by-4.0", "--pretty_name", "Tiny sample captions", "--card_examples", "3",
             "--gallery_rows", "5"]
    proc = subprocess.run([sys.executable, "build.py", "--output_dir", str(output), *flags],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Output(output, run_inputs(output, *flags), json.loads((output / STATS_FILE).read_text()))


def url_row(url: str, text: str, status: str = "ok", error: str | None = None, caption: str = "a red square",
            other: str = "a blue circle") -> dict:
    """An output row of a source without images; `other` is the candidate the second ranker did not choose."""
    ok = status == "ok"
    return {"URL": url, "TEXT": text, "top_caption": caption if ok else None,
            "top_caption_raw": caption if ok else None, "all_captions": [caption, other] if ok else None,
            "all_similarities": [0.31, 0.12] if ok else None, "rerank_similarities": [0.27, 0.05] if ok else None,
            "status": status, "error": error, "image_width": 64 if ok else None, "image_height": 48 if ok else None}


URL_SOURCE = Features({"URL": Value("string"), "TEXT": Value("string")})


def write_output(path: Path, rows: list[dict], *flags: str, rows_per_chunk: int = 100,
                 source_features: Features = URL_SOURCE) -> Output:
    """An output folder as a run leaves it, card aside: `rows` in chunks from the project's chunk writer, and
    the run's stats and config (`flags` as on the command line)."""
    features, store = output_features(source_features), OutputStore(str(path))
    for chunk, start in enumerate(range(0, len(rows), rows_per_chunk)):
        table = pa.Table.from_pylist(rows[start:start + rows_per_chunk], schema=features.arrow_schema)
        write_parquet_chunk(store, chunk_name(0, chunk), table)
    return Output(path, run_inputs(path, *flags), run_stats(rows))


def run_stats(rows: list[dict]) -> dict:
    """merge_stats(...) of a run that wrote `rows`, as one task."""
    stats = RunStats()
    stats.add({"status": [r["status"] for r in rows], "error": [r["error"] for r in rows]})
    return merge_stats([stats.to_dict()])


@pytest.fixture
def url_output(tmp_path, image_server) -> Output:
    """An output whose source had no image column: its ok rows point at the loopback server, one of them at
    a 404 (the image went away since the run), and one caption is hostile HTML."""
    rows = [
        url_row(image_server.url("/img/jpeg_rgb?gallery=1"), "a red picture"),
        url_row(image_server.url("/img/png_rgba?gallery=2"), HOSTILE, caption=HOSTILE),
        url_row(image_server.url("/404?gallery=3"), "gone since"),
        url_row(image_server.url("/404?gallery=4"), "failed in the run", "fetch_error", "HTTP 404"),
        url_row("ftp://example.invalid/x.jpg", "wrong scheme", "invalid_url", "not http(s)"),
    ]
    return write_output(tmp_path, rows, *LOOPBACK_GALLERY, "--source", "someone/some-dataset")

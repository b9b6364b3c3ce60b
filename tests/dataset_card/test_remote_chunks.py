"""Finishing an output that lives on object storage: the card, its plots and the gallery are rendered from
chunks read through a non-local fsspec filesystem (fsspec's in-memory one), into a local folder, and say what
those chunks hold."""

import html
import io
import re

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features
from datasets import Image as ImageFeature
from huggingface_hub import DatasetCard
from PIL import Image

from dataset_card.card import markdown_text, write_card
from dataset_card.gallery import write_gallery
from output.layout import CHUNK_GLOB, chunk_name
from output.schema import output_features
from output.store import OutputStore
from tests.dataset_card.conftest import URL_SOURCE, run_inputs, run_stats, url_row
from tests.dataset_card.test_card import section, table_rows
from tests.dataset_card.test_gallery import Page, thumbnails

ROWS = 1_200  # over 1,000: the card's size category then depends on counting the stored rows
ROWS_PER_CHUNK = 500
ROWS_PER_GROUP = 100
FEATURES = output_features(Features({**URL_SOURCE, "image": ImageFeature()}))
PLOTS = {"caption_words.png", "first_ranker.png", "second_ranker.png"}


def picture_size(i: int) -> tuple[int, int]:
    """Each row's embedded picture has its own size, so a thumbnail tells which row it was made from."""
    return 8 + i % 97, 8 + i // 97


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "teal").save(buffer, "PNG")
    return buffer.getvalue()


def stored_row(i: int) -> dict:
    """Every third row failed; ok ones differ in caption length and in both rankers' similarities."""
    ok = i % 3 != 2
    row = url_row(f"http://example.invalid/{i}.png", f"alt-text of row {i}", "ok" if ok else "fetch_error",
                  None if ok else "HTTP 404", caption=" ".join(["word"] * (1 + i % 11)) + f" {i}")
    if ok:
        row |= {"all_similarities": [0.2 + (i % 53) / 1000, 0.1], "rerank_similarities": [0.3 - (i % 41) / 1000, 0.25]}
    return row | {"image": {"bytes": png(picture_size(i)), "path": None}}


@pytest.fixture
def remote_chunks(tmp_path):
    """ROWS rows as parquet chunks of several row groups, one per task, on the in-memory filesystem, listed as
    finishing lists them (one memory store per process: each test writes under its own root and removes it)."""
    memory = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}/run"
    rows = [stored_row(i) for i in range(ROWS)]
    for task, start in enumerate(range(0, ROWS, ROWS_PER_CHUNK)):
        with memory.open(f"{root}/{chunk_name(task, 0)}", "wb") as file:
            pq.write_table(pa.Table.from_pylist(rows[start:start + ROWS_PER_CHUNK], schema=FEATURES.arrow_schema),
                           file, row_group_size=ROWS_PER_GROUP)
    store = OutputStore(f"memory://{root}")
    yield store.location, rows, [store.chunk(name) for name in store.glob(CHUNK_GLOB)]
    memory.rm(f"/{tmp_path.name}", recursive=True)


def test_card_and_gallery_of_chunks_on_object_storage_are_rendered_locally(remote_chunks, tmp_path):
    location, rows, chunks = remote_chunks
    inputs = run_inputs(location, "--card_examples", "4", "--gallery_rows", "6")
    stats = run_stats(rows)
    target = tmp_path / "rendered"

    write_card(target, chunks, inputs, stats)
    gallery = write_gallery(target, chunks, inputs)

    assert gallery == target / "gallery.html"
    assert sorted(path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file()) == sorted(
        ["README.md", "gallery.html", *(f"plots/{name}" for name in PLOTS)])
    assert fsspec.filesystem("memory").find(location) == [chunk.path for chunk in chunks]  # nothing written there
    ok = [row for row in rows if row["status"] == "ok"]
    card = DatasetCard.load(target / "README.md")
    assert card.data.size_categories == ["1K<n<10K"]
    assert card.data.dataset_info["features"] == FEATURES._to_yaml_list()

    statistics = section(card, "Statistics")
    assert f"rows: **{ROWS}**, captioned (`ok`): **{len(ok)}**" in statistics
    words = sorted(len(row["top_caption"].split()) for row in ok)
    assert (f"**Caption length in words** ({len(ok)} ok rows): min {words[0]:.4g}, median {words[len(words) // 2]:.4g}, "
            f"mean {sum(words) / len(words):.4g}, max {words[-1]:.4g}\n") in statistics
    for similarities in ([row["all_similarities"][0] for row in ok], [max(row["rerank_similarities"]) for row in ok]):
        assert f"({len(ok)} ok rows): min {min(similarities):.4f}" in statistics
        assert f"max {max(similarities):.4f}" in statistics
    assert [column.strip("`") for column, *_ in table_rows(section(card, "Schema"))] == list(FEATURES)

    examples = [text for text, *_ in table_rows(section(card, "Examples"))]
    assert len(examples) == 4 and set(examples) <= {markdown_text(row["TEXT"]) for row in ok}
    assert (examples[0], examples[-1]) == (markdown_text(ok[0]["TEXT"]), markdown_text(ok[-1]["TEXT"]))  # spread

    text = gallery.read_text()
    shown = [int(html.unescape(alt).removeprefix("alt-text of row "))
             for alt in re.findall(r'<div class="alt">(.*?)</div>', text)]
    assert Page(text).rows == len(shown) == 6 and Page(text).placeholders == 0
    ok_indices = [i for i, row in enumerate(rows) if row["status"] == "ok"]
    assert set(shown) <= set(ok_indices) and (shown[0], shown[-1]) == (ok_indices[0], ok_indices[-1])
    assert [image.size for image in thumbnails(text)] == [picture_size(i) for i in shown]  # each row's own picture

"""gallery.html: sample ok rows with inline thumbnails (embedded bytes, or re-fetched with the fetch stage),
placeholders for images that cannot be fetched, escaped text, and a page a real browser renders."""

import base64
import io
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser

import markupsafe
import pytest
from datasets import Features
from datasets import Image as ImageFeature
from PIL import Image

from dataset_card.gallery import write_gallery
from dataset_card.shown_text import shorten
from tests.dataset_card.conftest import HOSTILE, URL_SOURCE, url_row, write_output

DATA_URI = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


class Page(HTMLParser):
    """Rows, images, placeholders and scripts of a gallery page, as an HTML parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.rows, self.images, self.placeholders, self.scripts, self.external = 0, [], 0, 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.rows += "data-row" in attrs
        self.placeholders += attrs.get("data-missing") == "true"
        self.scripts += tag == "script"
        if tag == "img":
            self.images.append(attrs["src"])
        self.external += [value for name, value in attrs.items()
                          if name in ("src", "href") and not value.startswith("data:")]


def thumbnails(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in DATA_URI.findall(text)]


def test_embedded_images_become_small_inline_thumbnails(built):
    path = write_gallery(built.path, built.chunks, built.inputs)
    assert path == built.path / "gallery.html"
    text = path.read_text()
    page = Page(text)
    assert page.rows == len(page.images) == built.config["publish"]["gallery_rows"] == 5
    assert page.external == [] and page.scripts == 1
    for thumb in thumbnails(text):
        assert thumb.format == "JPEG" and max(thumb.size) <= 256
    ok = [row for row in built.table(["status", "TEXT", "top_caption", "all_captions"]).to_pylist()
          if row["status"] == "ok"]
    first = ok[0]
    for shown in (first["TEXT"], first["top_caption"], *first["all_captions"]):
        assert str(markupsafe.escape(shorten(shown))) in text  # as the page shows it: cut, then escaped


def test_no_gallery_when_zero_rows_asked(built):
    inputs = replace(built.inputs, gallery_rows=0)
    assert write_gallery(built.path, built.chunks, inputs) is None


def test_no_gallery_of_an_output_without_rows(built, tmp_path):
    assert write_gallery(tmp_path, [], built.inputs) is None and not any(tmp_path.iterdir())


def test_url_rows_are_refetched_and_a_dead_link_gets_a_placeholder(url_output, image_server):
    text = write_gallery(url_output.path, url_output.chunks, url_output.inputs).read_text()
    page = Page(text)
    assert page.rows == 3  # the ok rows only, though 10 were asked for
    assert len(page.images) == 2 and page.placeholders == 1
    assert "fetch_error" in text
    assert [image.size for image in thumbnails(text)] == [(64, 48), (30, 20)]
    for query in ("/img/jpeg_rgb?gallery=1", "/img/png_rgba?gallery=2", "/404?gallery=3"):
        assert image_server.count(query) == 1
    assert image_server.count("/404?gallery=4") == 0  # a row that failed in the run is not shown


@pytest.mark.parametrize("source, read", [((), True), (("--source", "someone/some-dataset"), False)])
def test_image_cells_naming_local_files_are_read_only_for_a_local_source(tmp_path, source, read):
    """As in the run: a Hub dataset whose image cells name paths must not make the gallery read (and publish) this
    machine's files."""
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 30), "red").save(picture)
    row = {**url_row("http://example.invalid/a.png", "a red picture"), "image": {"bytes": None, "path": str(picture)}}
    output = write_output(tmp_path / "out", [row], *source, source_features=Features({**URL_SOURCE, "image": ImageFeature()}))
    text = write_gallery(output.path, output.chunks, output.inputs).read_text()
    assert [image.size for image in thumbnails(text)] == ([(40, 30)] if read else [])
    assert Page(text).placeholders == (0 if read else 1)
    assert read or "local files are read only for a local source" in text


def test_untrusted_text_is_escaped(url_output):
    text = write_gallery(url_output.path, url_output.chunks, url_output.inputs).read_text()
    page = Page(text)
    assert page.scripts == 1 and len(page.images) == 2 and page.external == []
    assert "&lt;script&gt;" in text and HOSTILE not in text


def chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary on PATH (Debian package 'chromium')")
@pytest.mark.parametrize("which", ["built", "url_output"])
def test_a_real_browser_renders_every_row_and_decodes_every_thumbnail(which, request, tmp_path):
    output = request.getfixturevalue(which)
    path = write_gallery(output.path, output.chunks, output.inputs)
    expected = Page(path.read_text())
    dom = chromium("--dump-dom", path.as_uri(), tmp_path=tmp_path / "profile").stdout
    rendered = Page(dom)
    assert rendered.rows == expected.rows and rendered.placeholders == expected.placeholders
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-images="{len(expected.images)}"' in body and f'data-decoded="{len(expected.images)}"' in body
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)

    screenshot = tmp_path / "gallery.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1000,800", path.as_uri(), tmp_path=tmp_path / "profile")
    with Image.open(screenshot) as png:
        assert png.format == "PNG" and png.size == (1000, 800)
        colours = png.convert("RGB").getcolors(maxcolors=1_000_000)
    assert len(colours) > 50  # text and thumbnails, not a blank page

"""Row text from the web can be megabytes long: the card and the gallery show each piece cut to
MAX_SHOWN_CHARS characters with a visible ellipsis, cut before escaping, so their size is bounded by the rows
they show times that cap, whatever the data, and the cut text stays inert."""

import html
import re

from huggingface_hub import DatasetCard

from dataset_card.card import MAX_ERROR_REASONS, markdown_text, render_card
from dataset_card.gallery import render_gallery
from dataset_card.shown_text import ELLIPSIS, MAX_SHOWN_CHARS
from tests.dataset_card.conftest import HOSTILE, LOOPBACK_GALLERY, url_row, write_output
from tests.dataset_card.test_card import section, table_rows
from tests.dataset_card.test_gallery import Page

MB = 2**20
WIDEST_ESCAPE = len("&amp;")  # no character is escaped to more bytes, in markdown or in HTML
ROWS = 4
# The cap's last kept character is "<": escaped before the cut, it would be cut inside "&lt;".
LONG_ALT_TEXT = "x" * (MAX_SHOWN_CHARS - 2) + (" " + HOSTILE) * (MB // len(HOSTILE))
ONE_WORD_CAPTION = "y" * (MAX_SHOWN_CHARS - 2) + HOSTILE.replace(" ", "") * (100_000 // len(HOSTILE))


def shown_start(text: str) -> str:
    """What a cut cell must read once unescaped: the text (on one line) up to the cap, then the ellipsis."""
    return " ".join(text.split())[:MAX_SHOWN_CHARS - 1] + ELLIPSIS


def unescape_markdown(cell: str) -> str:
    return html.unescape(re.sub(r"\\(.)", r"\1", cell))


def outputs(tmp_path, image_server=None, *flags):
    """The same rows twice: with 1 MB alt-texts, long captions (and long URLs), and with short ones."""
    def rows(long: bool):
        return [url_row(image_server.url(f"/img/jpeg_rgb?long={i}" + ("&pad=" + "z" * 20_000 if long else ""))
                        if image_server else f"http://example.invalid/{i}.jpg",
                        LONG_ALT_TEXT if long else "an alt-text", caption=ONE_WORD_CAPTION if long else "a-caption",
                        other=ONE_WORD_CAPTION[::-1] if long else "another-caption")
                for i in range(ROWS)]
    return (write_output(tmp_path / "long", rows(True), *flags), write_output(tmp_path / "short", rows(False), *flags))


def test_markdown_text_cuts_before_escaping():
    assert markdown_text("x" * (MAX_SHOWN_CHARS - 2) + "<b>") == "x" * (MAX_SHOWN_CHARS - 2) + "&lt;" + ELLIPSIS
    assert markdown_text("x" * MAX_SHOWN_CHARS) == "x" * MAX_SHOWN_CHARS  # what fits is not cut


def test_the_card_shows_each_long_text_cut_and_its_size_stays_bounded(tmp_path):
    long, short = outputs(tmp_path, None, "--card_examples", str(ROWS))
    card = render_card(long.path, long.chunks, long.inputs, long.stats)
    baseline = render_card(short.path, short.chunks, short.inputs, short.stats)
    cells = 2  # TEXT and top_caption of each example
    assert len(card.encode()) <= len(baseline.encode()) + ROWS * cells * MAX_SHOWN_CHARS * WIDEST_ESCAPE
    shown = table_rows(section(DatasetCard(card), "Examples"))
    assert len(shown) == ROWS
    for text, caption, *_ in shown:
        assert unescape_markdown(text) == shown_start(LONG_ALT_TEXT)
        assert unescape_markdown(caption) == shown_start(ONE_WORD_CAPTION)
    assert "<script" not in card and "<img" not in card


def test_the_card_lists_the_most_common_error_reasons_and_counts_the_rest(tmp_path):
    reasons = [f"X-Robots-Tag: {i:02d} " + "noai " * 10_000 for i in range(MAX_ERROR_REASONS + 7)]
    rows = [url_row(f"http://example.invalid/{i}-{n}.jpg", "t", "opted_out", reason)
            for i, reason in enumerate(reasons) for n in range(len(reasons) - i)]  # reason i on (27 - i) rows
    output = write_output(tmp_path / "out", rows)
    card = DatasetCard(render_card(output.path, output.chunks, output.inputs, output.stats))
    errors = "| error |" + section(card, "Statistics").split("| error |")[1]
    shown = table_rows(errors)
    assert [(unescape_markdown(reason), int(count)) for reason, count in shown[:-1]] == [
        (shown_start(f"opted_out: {reason}"), len(reasons) - i) for i, reason in enumerate(reasons[:MAX_ERROR_REASONS])]
    assert shown[-1] == ["7 other reasons", str(sum(range(1, 8)))]


def test_the_gallery_shows_each_long_text_cut_and_its_size_stays_bounded(tmp_path, image_server):
    long, short = outputs(tmp_path, image_server, *LOOPBACK_GALLERY)
    gallery, baseline = render_gallery(long.chunks, long.inputs), render_gallery(short.chunks, short.inputs)
    cells = 6  # alt attribute and alt-text, top_caption, 2 candidates, URL of each row
    assert len(gallery.encode()) <= len(baseline.encode()) + ROWS * cells * MAX_SHOWN_CHARS * WIDEST_ESCAPE
    page = Page(gallery)
    assert page.rows == len(page.images) == ROWS and page.placeholders == 0  # every long URL was fetched
    assert page.scripts == 1 and page.external == []
    texts = {kind: [html.unescape(text) for text in re.findall(rf'<div class="{kind}">(.*?)</div>', gallery)]
             for kind in ("alt", "caption", "url")}
    assert texts["alt"] == [shown_start(LONG_ALT_TEXT)] * ROWS
    assert texts["caption"] == [shown_start(ONE_WORD_CAPTION)] * ROWS
    assert [text.startswith(image_server.url("/img/jpeg_rgb?long=")) and text.endswith(ELLIPSIS)
            and len(text) == MAX_SHOWN_CHARS for text in texts["url"]] == [True] * ROWS
    candidates = [html.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", gallery)]
    assert sorted(set(candidates)) == sorted({shown_start(ONE_WORD_CAPTION), shown_start(ONE_WORD_CAPTION[::-1])})
    assert [html.unescape(alt) for alt in re.findall(r'alt="([^"]*)"', gallery)] == [shown_start(LONG_ALT_TEXT)] * ROWS

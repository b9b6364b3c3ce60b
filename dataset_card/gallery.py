"""gallery.html: a self-contained page for looking at sample rows by eye — each image beside its alt-text, its
chosen caption and every candidate with both rankers' similarities. The rows are read from the output's
chunks wherever they are; the page is written into a local folder, which the caller stores beside them.

Nothing in it loads from elsewhere (thumbnails are inline JPEG data URIs, and its Content-Security-Policy
forbids anything else), and every piece of text is cut to a bounded length (`shorten`), then HTML-escaped:
captions, alt-texts and URLs are untrusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jinja2

from dataset_card.examples import sample_examples
from dataset_card.inputs import CardInputs
from dataset_card.metadata import DEFAULT_PRETTY_NAME
from dataset_card.shown_text import shorten
from dataset_card.thumbnails import thumbnails
from output.durable import write_text_durably
from output.layout import gallery_path
from output.reader import OutputChunk, read_schema

TEMPLATE = "gallery_template.html"


def render_gallery(chunks: Sequence[OutputChunk], inputs: CardInputs) -> str:
    embedded = "image" in read_schema(chunks).names
    examples = sample_examples(chunks, inputs.gallery_rows, ("image",) if embedded else ())
    images = [example.row["image"] for example in examples] if embedded else None
    shown = thumbnails([example.url for example in examples], images, inputs.fetch,
                       read_local_files=inputs.read_local_files)  # image cells read as the run read them
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["shown"] = shorten
    return env.get_template(TEMPLATE).render(
        title=inputs.pretty_name or DEFAULT_PRETTY_NAME,
        examples=examples,
        rows=list(zip(examples, shown, strict=True)),
    )


def write_gallery(target_dir: Path, chunks: Sequence[OutputChunk], inputs: CardInputs) -> Path | None:
    """Write the gallery of `inputs.gallery_rows` ok rows of `chunks` as `target_dir/gallery.html`; None (and no
    file) when that is 0 or there are no chunks. The old gallery is replaced whole or not at all."""
    if not inputs.gallery_rows or not chunks:
        return None
    path = gallery_path(target_dir)
    write_text_durably(path, render_gallery(chunks, inputs))
    return path

"""OUTPUT_DIR/gallery.html: a self-contained page for looking at sample rows by eye — each image beside its
alt-text, its chosen caption and every candidate with both rankers' similarities.

Nothing in it loads from elsewhere (thumbnails are inline JPEG data URIs, and its Content-Security-Policy
forbids anything else), and every piece of text is cut to a bounded length (`shorten`), then HTML-escaped:
captions, alt-texts and URLs are untrusted.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from builder.durable import write_text_durably
from dataset_card.examples import sample_examples
from dataset_card.metadata import DEFAULT_PRETTY_NAME, source_hub_id
from dataset_card.output_files import data_files, read_schema
from dataset_card.shown_text import shorten
from dataset_card.thumbnails import thumbnails

TEMPLATE = "gallery_template.html"
GALLERY = "gallery.html"


def render_gallery(output_dir: Path, config: dict) -> str:
    count = config["publish"]["gallery_rows"]
    embedded = "image" in read_schema(output_dir).names
    examples = sample_examples(output_dir, count, ("image",) if embedded else ())
    images = [example.row["image"] for example in examples] if embedded else None
    shown = thumbnails([example.url for example in examples], images, config["fetch"],
                       read_local_files=source_hub_id(config) is None)  # image cells read as the run read them
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["shown"] = shorten
    return env.get_template(TEMPLATE).render(
        title=config["publish"]["pretty_name"] or DEFAULT_PRETTY_NAME,
        examples=examples,
        rows=list(zip(examples, shown, strict=True)),
    )


def write_gallery(output_dir: Path, config: dict) -> Path | None:
    """Write the gallery of `config["publish"]["gallery_rows"]` ok rows; None (and no file) when that is 0 or
    the output has no rows. The old gallery is replaced whole or not at all."""
    output_dir = Path(output_dir)
    if not config["publish"]["gallery_rows"] or not data_files(output_dir):
        return None
    path = output_dir / GALLERY
    write_text_durably(path, render_gallery(output_dir, config))
    return path

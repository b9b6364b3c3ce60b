"""Human reference captions for images, keyed by the image's URL: what `tools.tune` scores against.

Any table `datasets` reads will do (a Hub dataset, or local parquet / JSON lines / CSV files): one row per
caption (several rows may share a key) or one row per image with a list of captions, as COCO's caption
splits come.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from builder.config import ConfigError
from builder.source import HUB_ID

KEY_COLUMNS = ("URL", "url", "coco_url", "image_url")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "TEXT", "text")
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _load_table(spec: str, split: str):
    """A `datasets.Dataset` of the references, or `ConfigError` saying why not."""
    import datasets

    path = Path(spec).expanduser()
    try:
        if path.is_file():
            if path.suffix not in LOCAL_FORMATS:
                raise ConfigError(f"--references {spec!r}: unknown file type {path.suffix!r} "
                                  f"(use {', '.join(LOCAL_FORMATS)})")
            return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        if path.is_dir() or HUB_ID.match(spec):
            return datasets.load_dataset(str(path) if path.is_dir() else spec, split=split)
    except ConfigError:
        raise
    except Exception as err:  # datasets raises many kinds; the user needs the one line
        raise ConfigError(f"--references {spec!r} cannot be read: {' '.join(str(err).split())[:300]}") from None
    raise ConfigError(f"--references {spec!r} is neither a local file or folder nor a Hub dataset id")


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], flag: str, spec: str) -> str:
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"{flag} {wanted!r} is not a column of {spec!r} (columns: {', '.join(columns)})")
        return wanted
    found = next((name for name in candidates if name in columns), None)
    if found is None:
        raise ConfigError(f"{spec!r} has none of the columns {', '.join(candidates)}: name one with {flag} "
                          f"(columns: {', '.join(columns)})")
    return found


def _captions(cell, column: str) -> list[str]:
    """A cell's captions: a string, or a list of strings."""
    if cell is None:
        return []
    if isinstance(cell, str):
        cell = [cell]
    if not isinstance(cell, list) or not all(isinstance(text, str) for text in cell):
        raise ConfigError(f"--reference_column {column!r} must hold strings or lists of strings, got {cell!r:.80}")
    return [" ".join(text.split()) for text in cell if text.strip()]


def load_references(spec: str, key_column: str | None = None, caption_column: str | None = None,
                    split: str = "train") -> dict[str, list[str]]:
    """{image URL: its reference captions} from `spec`; images without a caption are left out."""
    table = _load_table(spec, split)
    key = _pick(table.column_names, key_column, KEY_COLUMNS, "--reference_key", spec)
    caption = _pick(table.column_names, caption_column, CAPTION_COLUMNS, "--reference_column", spec)
    references: dict[str, list[str]] = defaultdict(list)
    for batch in table.select_columns([key, caption]).iter(batch_size=10_000):
        for url, cell in zip(batch[key], batch[caption], strict=True):
            if url is not None:
                references[url] += _captions(cell, caption)
    found = {url: captions for url, captions in references.items() if captions}
    if not found:
        raise ConfigError(f"--references {spec!r} holds no caption in column {caption!r}")
    return found

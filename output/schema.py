"""The output schema (DESIGN §3): source columns first, URL and TEXT leading, then the generated ones.

One explicit schema for every file, so that chunks whose rows all failed still match the others.
"""

from __future__ import annotations

OUTPUT_COLUMNS = (
    "top_caption",
    "top_caption_raw",
    "all_captions",
    "all_similarities",
    "rerank_similarities",
    "status",
    "error",
    "image_width",
    "image_height",
)


def output_features(source_features):
    """`datasets.Features` of an output row, given the (renamed) source features; internal `_` columns dropped."""
    from datasets import Features, Image, List, Value

    generated = {
        "top_caption": Value("string"),
        "top_caption_raw": Value("string"),
        "all_captions": List(Value("string")),
        "all_similarities": List(Value("float64")),
        "rerank_similarities": List(Value("float64")),
        "status": Value("string"),
        "error": Value("string"),
        "image_width": Value("int32"),
        "image_height": Value("int32"),
    }
    leading = {name: source_features[name] for name in ("URL", "TEXT")}
    rest = {name: Image() if isinstance(feature, Image) else feature  # read undecoded, served decoded
            for name, feature in source_features.items() if name not in leading and not name.startswith("_")}
    return Features({**leading, **rest, **generated})

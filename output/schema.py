"""The output schema (DESIGN §3): source columns first, URL and TEXT leading, then the generated ones.

The generated columns and their types are those the registered stages declare they write (internal `_` ones
never are): DESIGN §3's in its order, then any other a stage adds, in stage order. One explicit schema for
every file, so that chunks whose rows all failed still match the others.
"""

from __future__ import annotations

from map_fns.registry import STAGES

# DESIGN §3's generated columns, in the order it publishes them.
DESIGN_ORDER = ("top_caption", "top_caption_raw", "all_captions", "all_similarities", "rerank_similarities",
                "status", "error", "image_width", "image_height")


def generated_columns() -> dict[str, str]:
    """Every column the registered stages write to the output, name -> declared type, in output order (read
    when called, so a stage registered later adds its columns); `ValueError` when two stages declare one
    column with different types."""
    declared: dict[str, str] = {}
    for stage in STAGES:
        for column in stage.writes:
            if column.internal:
                continue
            if declared.setdefault(column.name, column.dtype) != column.dtype:
                raise ValueError(f"stage {stage.name!r} declares column {column.name!r} as {column.dtype}, an "
                                 f"earlier stage as {declared[column.name]}")
    ordered = [name for name in DESIGN_ORDER if name in declared] + [name for name in declared if name not in DESIGN_ORDER]
    return {name: declared[name] for name in ordered}


def feature(dtype: str):
    """The `datasets` feature of a declared type: "string", "int32", "float64", ..., or "list<T>"."""
    from datasets import List, Value

    if dtype.startswith("list<") and dtype.endswith(">"):
        return List(feature(dtype[len("list<"):-1]))
    return Value(dtype)


def output_features(source_features):
    """`datasets.Features` of an output row, given the (renamed) source features; internal `_` columns dropped."""
    from datasets import Features, Image

    generated = {name: feature(dtype) for name, dtype in generated_columns().items()}
    leading = {name: source_features[name] for name in ("URL", "TEXT")}
    rest = {name: Image() if isinstance(feature, Image) else feature  # read undecoded, served decoded
            for name, feature in source_features.items() if name not in leading and not name.startswith("_")}
    return Features({**leading, **rest, **generated})

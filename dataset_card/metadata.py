"""The card's YAML header: what the Hub shows and filters on (license, task, size, source), and the features,
read from the parquet schema itself.

No `configs` entry: the chunks' names already say their split (`data/train-*` is the train split by the
file-name rule the Hub and `datasets` share), and a card that has one makes `load_dataset` of the local
folder cache by the folder's name and that entry alone, not by the files (`datasets` 5.2 hashes a README
config's glob, never what it matches): a re-run into the folder, or another folder of the same name, then
reads the old rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import DatasetInfo, Features
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from dataset_card.inputs import CardInputs
from output.reader import OutputChunk, read_schema

DEFAULT_PRETTY_NAME = "Re-captioned images (LAION-COCO method)"
# The Hub's size_categories values: (upper bound, label), the last one open-ended.
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"),
                   (1_000_000_000_000, "100B<n<1T"), (None, "n>1T")]


def size_category(rows: int) -> str:
    return next(label for bound, label in SIZE_CATEGORIES if bound is None or rows < bound)


def output_features(chunks: Sequence[OutputChunk]) -> Features:
    """The features `datasets` will load, from the parquet schema (and the feature types stored in it)."""
    return Features.from_arrow_schema(read_schema(chunks))


def card_data(inputs: CardInputs, rows: int, features: Features | None) -> DatasetCardData:
    """The YAML header for an output of `rows` rows with `features` (None: no parquet, no `dataset_info`)."""
    data = DatasetCardData(
        license=inputs.license,
        pretty_name=inputs.pretty_name or DEFAULT_PRETTY_NAME,
        task_categories=["image-to-text"],
        size_categories=[size_category(rows)],
        source_datasets=[inputs.source_hub_id] if inputs.source_hub_id else None,
    )
    if features is not None:
        DatasetInfosDict({"default": DatasetInfo(features=features)}).to_dataset_card_data(data)
    return data

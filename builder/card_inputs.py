"""The run's side of `dataset_card.inputs.CardInputs`: filled from what the run holds, the config and the
source it resolved."""

from __future__ import annotations

from builder.config import BuildConfig, recorded_config
from builder.source import ResolvedSource
from dataset_card.inputs import CardInputs


def card_inputs(cfg: BuildConfig, source: ResolvedSource) -> CardInputs:
    publish = cfg.publish
    return CardInputs(config=recorded_config(cfg), source_name=source.shown_name, source_hub_id=source.hub_id,
                      read_local_files=source.read_local_files, fetch=cfg.fetch, license=publish.license,
                      pretty_name=publish.pretty_name, push_to_hub=publish.push_to_hub,
                      card_examples=publish.card_examples, gallery_rows=publish.gallery_rows)

"""The run's side of `dataset_card.inputs.CardInputs`: filled from what the run holds, the config and the
source it resolved."""

from __future__ import annotations

from builder.config import BuildConfig, ConfigError, recorded_config
from builder.source import ResolvedSource
from dataset_card.inputs import CardInputs
from map_fns.blocklist import ListInfo, shared_blocklist


def card_inputs(cfg: BuildConfig, source: ResolvedSource) -> CardInputs:
    publish = cfg.publish
    lists, unread = blocklists_used(cfg.fetch.blocklist)
    return CardInputs(config=recorded_config(cfg), source_name=source.shown_name, source_hub_id=source.hub_id,
                      read_local_files=source.read_local_files, fetch=cfg.fetch, license=publish.license,
                      pretty_name=publish.pretty_name, push_to_hub=publish.push_to_hub,
                      card_examples=publish.card_examples, gallery_rows=publish.gallery_rows,
                      blocklists=lists, blocklists_unread=unread)


def blocklists_used(sources: list[str]) -> tuple[tuple[ListInfo, ...], str | None]:
    """The blocklists' names, sizes and checksums, read again for the card; when they cannot be read any more (a
    finish elsewhere, a file moved) the card says why instead of failing a finished run."""
    try:
        return shared_blocklist(tuple(sources)).lists, None
    except ConfigError as err:
        return (), str(err)

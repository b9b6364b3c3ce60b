"""What the run that made an output tells its card and gallery.

The card names the source the run resolved, and the gallery fetches thumbnails with the fetch settings the run
used, instead of working either out again from the config dict (`dataset_card` never imports `builder`).
"""

from __future__ import annotations

from dataclasses import dataclass

from map_fns.blocklist import ListInfo
from map_fns.fetch import FetchConfig


@dataclass(frozen=True)
class CardInputs:
    config: dict  # BuildConfig.to_dict(): shown whole as YAML; the recipe and the models are read from it
    source_name: str  # where the rows came from, as the card names it
    source_hub_id: str | None  # the Hub dataset the rows came from; None for local files
    read_local_files: bool  # image cells naming local files may be read (a local source), as the run read them
    fetch: FetchConfig  # the run's fetch settings: thumbnails are fetched as the rows were
    license: str  # the publish settings the card and gallery show or follow, as on the command line
    pretty_name: str | None
    push_to_hub: str | None
    card_examples: int
    gallery_rows: int
    blocklists: tuple[ListInfo, ...]  # the --blocklist files as read when the card was made (name, size, checksum)
    blocklists_unread: str | None = None  # why they could not be read then, if they could not

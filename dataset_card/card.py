"""An output's README.md: the YAML `load_dataset` and the Hub read, then what the dataset is, how it was made
(models, revisions, recipe, seed, config), what the run produced (counts, caption lengths, similarities,
plots), example rows and the schema.

The rows are read from the output's chunks wherever they are (a local folder, object storage); the card and
its plots are written into a local folder, which the caller stores beside the chunks."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import DatasetCard

from dataset_card.columns import schema_rows
from dataset_card.examples import sample_examples
from dataset_card.inputs import CardInputs
from dataset_card.metadata import card_data, output_features
from dataset_card.plots import write_plots
from dataset_card.provenance import models_used
from dataset_card.shown_text import shorten
from dataset_card.summary import CaptionSummary, summarise
from map_fns import captioners
from map_fns.flags import NONE
from map_fns.registry import STAGES
from map_fns.row_filters import row_filters
from map_fns.screen import ScreenConfig
from map_fns.status import BLOCKED, BLOCKED_BY_LIST, FILTERED, OPTED_OUT
from output.durable import write_durably
from output.layout import card_path
from output.reader import OutputChunk, count_rows

TEMPLATE = "card_template.md"
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")
MAX_ERROR_REASONS = 20  # the most common are listed; a web-scale run can count thousands of distinct ones


def markdown_text(text) -> str:
    """Untrusted text as one inert table cell: no HTML, no markup, no cell breaks, one line, cut to a bounded
    length (`shorten`)."""
    if text is None:
        return "—"
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(shorten(" ".join(str(text).split())), quote=False))


def code_span(text) -> str:
    """Text as an inline code span that cannot end early or split a table cell."""
    return "`" + " ".join(str(text).split()).replace("`", "'").replace("|", "\\|") + "`"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = markdown_text
    env.filters["code"] = code_span
    env.globals["NONE"] = NONE  # a model flag's value that switches its stage off
    return env


def captioner_used(config: dict) -> tuple[captioners.CaptionerFamily | None, str]:
    """The captioner's family (None when its config.json is neither a local file nor in the local cache, e.g. a
    card re-rendered elsewhere) and the prompt the run gave it (`auto` resolved to the family's own)."""
    prompt = config["caption"]["caption_prompt"]
    try:
        family = captioners.family_of(captioners.checkpoint_model_type(config["caption"]["captioner"]))
    except ValueError:
        return None, prompt
    return family, captioners.prompt_for(family, prompt)


def recipe(config: dict, prompt: str) -> dict:
    """The settings that shape the captions (the registry's recipe stages), beyond the models and the seed, with
    the prompt the captioner was given, and the two engine settings that shape them too: the models' number
    formats and the size images are decoded at."""
    values = {key: value for stage in STAGES if stage.recipe
              for key, value in config[stage.name].items() if key not in (stage.model, "seed")}
    values["caption_prompt"] = prompt
    values["precision"] = config["run"]["precision"]
    values["resize_min_side"] = config["fetch"]["resize_min_side"]
    return {key: repr(value) if isinstance(value, str) else value for key, value in values.items()}


def distributions(summary: CaptionSummary) -> list[tuple]:
    """(plot name, title, number format, min/median/mean/max or None) for the statistics section."""
    return [("caption_words", "Caption length in words", "%.4g", summary.caption_words.describe()),
            ("first_ranker", "First-ranker similarity (all_similarities[0])", "%.4f", summary.first_ranker.describe()),
            ("second_ranker", "Second-ranker similarity of the chosen caption", "%.4f",
             summary.second_ranker.describe())]


def error_rows(errors: dict[str, int], shown: int = MAX_ERROR_REASONS) -> tuple[list[tuple[str, int]], int, int]:
    """The `shown` most common (reason, rows), then how many other reasons there are and how many rows they
    count together."""
    ranked = sorted(errors.items(), key=lambda item: -item[1])
    rest = ranked[shown:]
    return ranked[:shown], len(rest), sum(count for _, count in rest)


KEPT_OUT = {  # statuses of rows whose image was never fetched, or dropped unseen, and what each means
    BLOCKED_BY_LIST: "its URL, or its image's hash, is on a blocklist: never fetched, or dropped before decoding",
    FILTERED: "it failed a score filter: never fetched (the source's scores), or never captioned (punsafe_pred)",
    BLOCKED: "its host resolves to an address that is not public: never fetched",
    OPTED_OUT: "its server asked, with X-Robots-Tag, that the image not be used for AI: its body never read",
}


def kept_out(stats: dict, config: dict) -> dict:
    """What the card says was kept out: rows per kept-out status with their meaning, the reasons counted for
    them, and the score filters and heads the run applied."""
    statuses = [(status, stats["statuses"].get(status, 0), meaning) for status, meaning in KEPT_OUT.items()]
    reasons = [(reason, count) for reason, count in stats["errors"].items()
               if reason.split(":", 1)[0] in (BLOCKED_BY_LIST, FILTERED)]
    fetch, screen = config["fetch"], config["screen"]
    filters = [str(row_filter) for row_filter in row_filters(fetch["filter"], fetch["max_punsafe"],
                                                             fetch["max_pwatermark"])]
    heads = {column: spec for column, (_, spec) in ScreenConfig(**screen).heads.items()}
    return {"statuses": statuses, "reasons": reasons[:MAX_ERROR_REASONS], "filters": filters, "heads": heads,
            "embedding": screen["screen_clip"], "max_punsafe_pred": screen["max_punsafe_pred"]}


def render_card(target_dir: Path, chunks: Sequence[OutputChunk], inputs: CardInputs, stats: dict) -> str:
    """The card's text, from the rows of `chunks`; writes its plots under `target_dir/plots/` on the way."""
    features = output_features(chunks) if chunks else None  # no chunks: no task had rows
    summary = summarise(chunks)
    rows = stats["rows"]
    ok_rows = stats["statuses"].get("ok", 0)
    config = inputs.config
    data = card_data(inputs, count_rows(chunks), features)
    family, prompt = captioner_used(config)
    return _environment().get_template(TEMPLATE).render(
        card_data=data.to_yaml(),
        pretty_name=data.pretty_name,
        config=config,
        config_yaml=yaml.safe_dump(config, sort_keys=False).rstrip(),
        source_hub_id=inputs.source_hub_id,
        source_name=inputs.source_name,
        load_path=inputs.push_to_hub or "path/to/output_dir",
        models=models_used(config),
        recipe=recipe(config, prompt),
        captioner_family=family,
        caption_prompt=prompt,
        stats=stats,
        errors=error_rows(stats["errors"]),
        kept_out=kept_out(stats, config),
        blocklists=inputs.blocklists,
        blocklists_unread=inputs.blocklists_unread,
        rows=rows,
        ok_rows=ok_rows,
        ok_rate=ok_rows / rows if rows else 0.0,
        throughput=rows / stats["worker_seconds"] if stats.get("worker_seconds") else None,
        distributions=distributions(summary),
        plots=write_plots(target_dir, summary),
        examples=sample_examples(chunks, inputs.card_examples),
        schema=schema_rows(features) if features else [],
    )


def write_card(target_dir: Path, chunks: Sequence[OutputChunk], inputs: CardInputs, stats: dict) -> None:
    """Write the card of the rows in `chunks` as `target_dir/README.md` (and `target_dir/plots/`), replacing
    the old card whole or not at all; `stats` is `merge_stats(...)`'s dict."""
    write_durably(card_path(target_dir), DatasetCard(render_card(target_dir, chunks, inputs, stats)).save)

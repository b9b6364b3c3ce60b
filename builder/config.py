"""The run's configuration: one dataclass per concern, filled from defaults < preset < YAML < flags.

Everything here is cheap to import and check (no torch, no model), so a bad value fails in a second with
one line naming it, before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from builder.durable import write_text_durably

from map_fns.caption import CaptionConfig
from map_fns.fetch import FetchConfig
from map_fns.flags import ConfigError
from map_fns.precision import PRECISIONS, check_precision
from map_fns.rank import RankConfig
from map_fns.repair import RepairConfig
from map_fns.rerank import RerankConfig

PRESETS = ("laion-coco", "tiny")
DEFAULT_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "laion-coco-builder")


@dataclass
class SourceConfig:
    source: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, or local parquet file, folder or glob. Default: the bundled sample."},
    )
    url_column: str | None = field(default=None, metadata={"help": "URL column (default: URL or url)."})
    text_column: str | None = field(default=None, metadata={"help": "Alt-text column (default: TEXT, caption or text)."})
    image_column: str | None = field(
        default=None, metadata={"help": "Column of image bytes; rows with bytes are not fetched (default: image)."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Only the first N source rows."})
    source_split: str = field(default="train", metadata={"help": "Split of a Hub source."})
    retry_failed: str | None = field(
        default=None,
        metadata={"help": "A previous OUTPUT_DIR: re-fetch its fetch_error rows, carry every other row over."},
    )

    def __post_init__(self):
        if self.retry_failed and self.source:
            raise ValueError("--retry_failed reads the previous output as its source; drop --source")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be >= 1, got {self.max_samples}")


@dataclass
class RunConfig:
    output_dir: str = field(default=None, metadata={"help": "Where data/*.parquet and README.md go (required)."})
    preset: str = field(default="laion-coco", metadata={"help": f"Model preset: {' | '.join(PRESETS)}."})
    config: str | None = field(default=None, metadata={"help": "YAML file with any of these flags as keys."})
    batch_size: int = field(
        default=64, metadata={"help": "Rows per batch through the stages: the most images a model sees at once."}
    )
    model_batch_size: int = field(
        default=0,
        metadata={"help": "Images (captions, for repair) per model call; 0: as many as fit in free GPU memory, "
                          "halved and retried on out-of-memory."},
    )
    precision: str = field(default="auto", metadata={"help": f"{' | '.join(PRECISIONS)}: auto is bf16 (else fp16) "
                                                              "on GPUs, fp32 on CPUs."})
    rows_per_chunk: int = field(
        default=10_000, metadata={"help": "Rows per output parquet file, rounded up to whole batches."}
    )
    prefetch_batches: int = field(default=4, metadata={"help": "Fetched batches kept ready ahead of the models."})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "Where --preset tiny builds its models."})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete this run's earlier output in --output_dir and start over "
                                         "(without it, the same command resumes; a changed one is refused)."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for name in ("batch_size", "rows_per_chunk", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.model_batch_size < 0:
            raise ValueError(f"--model_batch_size must be >= 0, got {self.model_batch_size}")
        check_precision(self.precision)


@dataclass
class PublishConfig:
    """What is made of the finished output: the card, the gallery, and the Hub push. None of it changes rows."""

    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repo (namespace/name) to push the output to, created if missing."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repo private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to, created if missing (default: main)."})
    push_every: int = field(
        default=0, metadata={"help": "Also push finished chunks every N chunks the main process writes (0: only at the end)."}
    )
    license: str = field(default="other", metadata={"help": "License id for the card's YAML (e.g. cc-by-4.0)."})
    pretty_name: str | None = field(default=None, metadata={"help": "Dataset name shown on the card."})
    card_examples: int = field(default=8, metadata={"help": "Example rows shown on the card."})
    gallery_rows: int = field(default=24, metadata={"help": "Rows in OUTPUT_DIR/gallery.html (0: no gallery)."})

    def __post_init__(self):
        for name in ("push_every", "card_examples", "gallery_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.push_to_hub is not None and (self.push_to_hub.count("/") != 1 or "" in self.push_to_hub.split("/")):
            raise ValueError(f"--push_to_hub must be namespace/name, got {self.push_to_hub!r}")
        for name in ("private", "revision", "push_every"):
            if getattr(self, name) and not self.push_to_hub:
                raise ValueError(f"--{name} needs --push_to_hub")


SECTIONS = {
    "source": SourceConfig,
    "run": RunConfig,
    "publish": PublishConfig,
    "fetch": FetchConfig,
    "caption": CaptionConfig,
    "rank": RankConfig,
    "rerank": RerankConfig,
    "repair": RepairConfig,
}


@dataclass
class BuildConfig:
    """The root: one attribute per section, each a dataclass whose fields are flags."""

    source: SourceConfig
    run: RunConfig
    publish: PublishConfig
    fetch: FetchConfig
    caption: CaptionConfig
    rank: RankConfig
    rerank: RerankConfig
    repair: RepairConfig

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def tiny_preset(cache_dir: str) -> dict[str, str]:
    """Model flags pointing at the tiny models `builder.tiny_models` builds into `cache_dir` at run time."""
    from builder.tiny_models import tiny_model_paths

    paths = tiny_model_paths(cache_dir)
    return {"captioner": paths.captioner, "ranker": paths.ranker, "reranker": paths.reranker,
            "repairer": paths.repairer}


class _Parser(HfArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def _as_flags(values: dict, origin: str, known: set[str]) -> list[str]:
    """Turn `{key: value}` into `--key value` tokens so YAML and presets go through argparse's own checks."""
    tokens = []
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {origin}")
        if value is not None:
            tokens.append(f"--{key}={value}")  # one token: a value starting with '-' stays a value
    return tokens


def _read_yaml(path: str) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path!r} cannot be read: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path!r} must hold a mapping of flag names to values")
    return values


def _parse(parser: HfArgumentParser, tokens: list[str]) -> list:
    try:
        *sections, unknown = parser.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} (see --help)")
    return sections


def parse_config(argv: list[str] | None = None) -> BuildConfig:
    """Parse flags (and the YAML / preset they name) into a checked `BuildConfig`, or raise `ConfigError`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(list(SECTIONS.values()))
    known = {action.dest for action in parser._actions}
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    early, _ = first.parse_known_args(argv)

    user_tokens = []
    if early.config:
        yaml_values = _read_yaml(early.config)
        yaml_values.pop("config", None)
        user_tokens += _as_flags(yaml_values, early.config, known)
    user_tokens += argv
    sections = _parse(parser, user_tokens)
    run = sections[list(SECTIONS).index("run")]
    if run.preset == "tiny":  # the preset's values sit under YAML and flags, in the cache_dir they chose
        sections = _parse(parser, _as_flags(tiny_preset(run.cache_dir), "--preset tiny", known) + user_tokens)
    cfg = BuildConfig(**dict(zip(SECTIONS, sections)))
    if cfg.rank.keep_top > cfg.caption.num_candidates:
        raise ConfigError(f"--keep_top ({cfg.rank.keep_top}) must not exceed --num_candidates "
                          f"({cfg.caption.num_candidates})")
    return cfg


def save_config(cfg: BuildConfig, path: Path) -> None:
    """The resolved config beside the output: re-running with `--config` on it reproduces the run."""
    flat = {key: value for section in cfg.to_dict().values() for key, value in section.items()}
    flat.pop("config")
    flat.pop("overwrite")  # a saved config must never wipe a folder when reused
    write_text_durably(path, yaml.safe_dump(flat, sort_keys=False))

"""The run's configuration: one dataclass per concern, filled from defaults < preset < YAML < flags.

Everything here is cheap to import and check (no torch, no model), so a bad value fails in a second with
one line naming it, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

from builder.tasks import DEFAULT_ROWS_PER_TASK
from builder.flag_files import as_flags, bundled_presets, preset_file, read_flag_file, read_preset

from map_fns.flags import ConfigError, FlagParser, above, at_least, require
from map_fns.precision import PRECISIONS, check_precision
from map_fns.registry import STAGES

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
            raise ConfigError("--retry_failed reads the previous output as its source; drop --source")
        if self.max_samples is not None:
            at_least(self, "max_samples", 1)


@dataclass
class RunConfig:
    output_dir: str = field(
        default=None,
        metadata={"help": "Where data/*.parquet and README.md go (required): a folder, or an fsspec URL such as "
                          "s3://bucket/run (pip install 'laion-coco-builder[s3]')."},
    )
    preset: str = field(
        default="laion-coco",
        metadata={"help": f"A bundled preset ({' | '.join(bundled_presets())}) or a YAML file of flag values, e.g. "
                          "the best.yaml of python -m tools.tune; --config and flags override its values."},
    )
    config: str | None = field(default=None, metadata={"help": "YAML file with any of these flags as keys."})
    batch_size: int = field(
        default=64, metadata={"help": "Rows per batch through the stages: the most images a model sees at once."}
    )
    model_batch_size: int = field(
        default=0,
        metadata={"help": "Images (captions, for repair) per model call; 0: as many as fit in free GPU memory, "
                          "halved and retried on out-of-memory."},
    )
    precision: str = field(default="auto", metadata={"help": f"{' | '.join(PRECISIONS)}: auto runs each model as "
                                                              "LAION did (on GPUs BLIP and T5 fp32 with TF32 matmuls, "
                                                              "CLIP fp16; fp32 on CPUs); fp32 is strict; bf16/fp16 "
                                                              "put every model in half precision, which changes "
                                                              "captions."})
    rows_per_chunk: int = field(
        default=10_000, metadata={"help": "Rows per output parquet file, rounded up to whole batches."}
    )
    rows_per_task: int = field(
        default=DEFAULT_ROWS_PER_TASK,
        metadata={"help": "Rows per task, the unit of work workers take (whole parquet row groups where they fit); "
                          "fixed for the run by its first attempt."},
    )
    lease_seconds: float = field(
        default=300.0,
        metadata={"help": "A task whose worker stopped renewing its lease for this long is taken over by a live "
                          "worker (keep the workers' clocks in sync to within a small part of it)."},
    )
    prefetch_batches: int = field(default=4, metadata={"help": "Fetched batches kept ready ahead of the models."})
    cache_dir: str = field(
        default=DEFAULT_CACHE_DIR,
        metadata={"help": "Where --preset tiny builds its models; what {cache_dir} in a preset's values stands for."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Delete this run's earlier output in --output_dir and start over "
                                         "(without it, the same command resumes; a changed one is refused)."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("--output_dir is required")
        preset_file(self.preset)
        for name in ("batch_size", "rows_per_chunk", "rows_per_task", "prefetch_batches"):
            at_least(self, name, 1)
        above(self, "lease_seconds", 0)
        at_least(self, "model_batch_size", 0)
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
            at_least(self, name, 0)
        if self.push_to_hub is not None:
            parts = self.push_to_hub.split("/")
            require(self, "push_to_hub", len(parts) == 2 and "" not in parts, "be namespace/name")
        for name in ("private", "revision", "push_every"):
            if getattr(self, name) and not self.push_to_hub:
                raise ConfigError(f"--{name} needs --push_to_hub")


RUN_SECTIONS = {"source": SourceConfig, "run": RunConfig, "publish": PublishConfig}


def sections() -> dict[str, type]:
    """Every config section by name: the run's own, then one per registered stage (`map_fns.registry`), read
    when called so that a stage registered later has its flags too."""
    return {**RUN_SECTIONS, **{stage.name: stage.config for stage in STAGES}}


@dataclass
class BuildConfig:
    """The root: the run's own sections, and each registered stage's config by stage name (`cfg.caption`)."""

    source: SourceConfig
    run: RunConfig
    publish: PublishConfig
    stages: dict[str, object]

    def __getattr__(self, name: str):
        """A stage's section as an attribute (only called for names that are not fields)."""
        try:
            return self.__dict__["stages"][name]
        except KeyError:
            raise AttributeError(f"no config section {name!r}") from None

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in sections()}


class _SectionsParser(FlagParser, HfArgumentParser):
    """The sections' dataclass fields as flags (`HfArgumentParser`), errors as `ConfigError` (`FlagParser`)."""


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
    names = sections()
    parser = _SectionsParser(list(names.values()))
    known = {action.dest for action in parser._actions}
    first = FlagParser(add_help=False)
    first.add_argument("--config")
    early, _ = first.parse_known_args(argv)

    user_tokens = []
    if early.config:
        yaml_values = read_flag_file(early.config, "--config")
        yaml_values.pop("config", None)
        user_tokens += as_flags(yaml_values, early.config, known)
    user_tokens += argv
    chosen, _ = parser.parse_known_args(user_tokens)  # the preset and cache dir that YAML and flags chose
    preset = read_preset(chosen.preset, chosen.cache_dir)
    preset_tokens = as_flags(preset, f"--preset {chosen.preset!r}", known)  # first: YAML and flags win
    parsed = dict(zip(names, _parse(parser, preset_tokens + user_tokens)))
    cfg = BuildConfig(**{name: parsed.pop(name) for name in RUN_SECTIONS}, stages=parsed)
    return cfg


INVOCATION_FLAGS = ("config", "overwrite")  # how one command was given, not what the run is: never saved or shown
# (a saved config must never wipe a folder when reused, nor name a YAML file of the machine that ran it)


def recorded_config(cfg: BuildConfig) -> dict:
    """`cfg.to_dict()` without the invocation flags: what build_config.yaml saves and the card shows, the same
    whichever command (a worker, `python -m builder.finish`) writes them."""
    return {name: {key: value for key, value in section.items() if key not in INVOCATION_FLAGS}
            for name, section in cfg.to_dict().items()}


def config_text(cfg: BuildConfig) -> str:
    """The resolved config as YAML, saved beside the output: re-running with `--config` on it reproduces the run."""
    flat = {key: value for section in recorded_config(cfg).values() for key, value in section.items()}
    return yaml.safe_dump(flat, sort_keys=False)

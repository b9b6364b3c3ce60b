"""Re-caption an image dataset the LAION-COCO way.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] build.py --output_dir DIR [flags]

Every process is a worker that takes the run's tasks until none is left; start any number, with any launcher,
at any time (README, "Running on many GPUs"). Flags and YAML keys: `python build.py --help`. Everything cheap is
checked before torch is imported, so a bad flag fails at once with one line.
"""

import os
import sys

from builder.cli import failed
from builder.config import BuildConfig, ConfigError, parse_config
from builder.hub import PushError, check_can_push, check_chunk_files
from builder.interrupt import RunInterrupted
from builder.source import ResolvedSource, check_source, plan_tasks
from builder.tasks import Task
from map_fns.blocklist import shared_blocklist
from output.store import OutputStore
from output.viewer import ViewerCheckError


def check_before_work(cfg: BuildConfig) -> tuple[ResolvedSource, list[Task] | None]:
    """The source (and its tasks, when its footers are local), the blocklists, the output location, the Hub token
    and the output's file count: what would otherwise fail after hours of work."""
    source = check_source(cfg.source, cfg.fetch.row_filters())
    shared_blocklist(tuple(cfg.fetch.blocklist))  # read now: a missing file or a bad line fails before any work
    try:
        store = OutputStore(cfg.run.output_dir)
    except (ImportError, ValueError) as err:  # fsspec: an unknown protocol, or its library not installed
        raise ConfigError(f"--output_dir {cfg.run.output_dir!r}: {err}") from None
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set for every process by accelerate launch / torchrun
    if cfg.run.overwrite and processes > 1:
        raise ConfigError(f"--overwrite with {processes} processes would let each one delete the others' work: "
                          "start over with one process (python build.py --overwrite ...), then launch the rest")
    if cfg.publish.push_to_hub:
        if not store.is_local:
            raise ConfigError(f"--push_to_hub needs a local --output_dir (got {cfg.run.output_dir}); push a copy "
                              "with `hf upload`, or build into a local folder")
        check_can_push(cfg.publish.push_to_hub)
    plan = plan_tasks(source, cfg.source, cfg.run.rows_per_task) if source.parquet_files else None
    if plan:  # a Hub source's tasks are checked once the first worker made them
        check_chunk_files(cfg, plan)
    return source, plan


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        source, plan = check_before_work(cfg)
    except ConfigError as err:
        return failed(err)

    from builder.run import build

    try:
        build(cfg, source, plan)
    except (ConfigError, RunInterrupted, ViewerCheckError, PushError) as err:  # on publishing errors the
        return failed(err)  # output is complete: `python -m builder.finish OUTPUT_DIR` finishes the push
    return 0


if __name__ == "__main__":
    sys.exit(main())

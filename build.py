"""Re-caption an image dataset the LAION-COCO way.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] build.py --output_dir DIR [flags]

Flags and YAML keys: `python build.py --help`. Everything cheap is checked before torch is imported, so a
bad flag fails at once with one line.
"""

import os
import sys

from builder.cli import failed
from builder.config import BuildConfig, ConfigError, parse_config
from builder.hub import PushError, check_can_push
from builder.interrupt import RunInterrupted
from builder.source import ResolvedSource, check_source, source_rows
from output.viewer import ViewerCheckError, chunk_files_problem


def check_before_work(cfg: BuildConfig) -> ResolvedSource:
    """The source, the Hub token and the output's file count: what would otherwise fail after hours of work."""
    source = check_source(cfg.source)
    if cfg.publish.push_to_hub:
        check_can_push(cfg.publish.push_to_hub)
    rows = source_rows(source, cfg.source)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set for every process by accelerate launch / torchrun
    problem = rows and chunk_files_problem(rows, world_size, cfg.run.rows_per_chunk, cfg.run.batch_size)
    if problem and cfg.publish.push_to_hub:
        raise ConfigError(problem)
    if problem and os.environ.get("RANK", "0") == "0":
        print(f"warning: {problem} (the output could not be pushed as it is)", file=sys.stderr)
    return source


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        source = check_before_work(cfg)
    except ConfigError as err:
        return failed(err)

    from builder.run import build, join_processes

    state = join_processes()
    try:
        build(cfg, source, state)
    except (ConfigError, RunInterrupted, ViewerCheckError, PushError) as err:  # on publishing errors the
        return failed(err)  # output is complete on disk: the same command finishes the push
    return 0


if __name__ == "__main__":
    sys.exit(main())

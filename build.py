"""Re-caption an image dataset the LAION-COCO way.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] build.py --output_dir DIR [flags]

Flags and YAML keys: `python build.py --help`. Everything cheap is checked before torch is imported, so a
bad flag fails at once with one line.
"""

import sys

from builder.cli import failed
from builder.config import ConfigError, parse_config
from builder.hub import PushError, check_can_push
from builder.interrupt import RunInterrupted
from builder.source import check_source


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        source = check_source(cfg.source)
        if cfg.publish.push_to_hub:
            check_can_push(cfg.publish.push_to_hub)  # before hours of work, not after
    except ConfigError as err:
        return failed(err)

    from builder.run import build, join_processes
    from builder.validate import ViewerCheckError

    state = join_processes()
    try:
        build(cfg, source, state)
    except (ConfigError, RunInterrupted, ViewerCheckError, PushError) as err:  # on publishing errors the
        return failed(err)  # output is complete on disk: the same command finishes the push
    return 0


if __name__ == "__main__":
    sys.exit(main())

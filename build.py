"""Re-caption an image dataset the LAION-COCO way.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] build.py --output_dir DIR [flags]

Flags and YAML keys: `python build.py --help`. Everything cheap is checked before torch is imported, so a
bad flag fails at once with one line.
"""

import logging
import sys

from builder.config import ConfigError, parse_config
from builder.hub import check_can_push
from builder.source import check_source


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        source = check_source(cfg.source)
        if cfg.publish.push_to_hub:
            check_can_push(cfg.publish.push_to_hub)  # before hours of work, not after
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import torch
    from accelerate import PartialState

    from builder.hub import PushError
    from builder.interrupt import RunInterrupted
    from builder.run import build
    from builder.validate import ViewerCheckError

    # cpu=True on GPU-less machines makes torchrun's processes one gloo group; otherwise each would think
    # it is alone and read every row.
    state = PartialState(cpu=not torch.cuda.is_available())
    logging.basicConfig(format=f"%(asctime)s rank{state.process_index} %(name)s: %(message)s")
    for package in ("builder", "map_fns"):
        logging.getLogger(package).setLevel(logging.INFO)
    try:
        build(cfg, source, state)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except (ViewerCheckError, PushError) as err:  # the output is complete on disk; only publishing failed
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Re-caption an image dataset the LAION-COCO way.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] build.py --output_dir DIR [flags]

Flags and YAML keys: `python build.py --help`. Everything cheap is checked before torch is imported, so a
bad flag fails at once with one line.
"""

import logging
import sys

from builder.config import ConfigError, parse_config
from builder.source import check_source


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        source = check_source(cfg.source)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import torch
    from accelerate import PartialState

    from builder.interrupt import RunInterrupted
    from builder.run import build

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
    return 0


if __name__ == "__main__":
    sys.exit(main())

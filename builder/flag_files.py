"""YAML files of flag values: the `--config` file and presets, read the same way and turned into `--key=value`
tokens, so that their values go through argparse's own checks like flags typed on the command line.

A preset is a bundled name (a file in `builder/presets/`) or the path of any such file, e.g. the `best.yaml`
that `tools.tune` writes. Its string values may hold `{cache_dir}`, the run's `--cache_dir` as an absolute
path: the tiny preset's models are built there when the run starts, in whichever cache dir it was given.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from map_fns.flags import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"
CACHE_DIR_PLACEHOLDER = "{cache_dir}"
NOT_IN_PRESETS = ("preset", "config")  # a preset is one layer: it cannot name another one


def bundled_presets() -> list[str]:
    """The names `--preset` takes besides a path: the YAML files shipped in `builder/presets/`."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def preset_file(preset: str) -> Path:
    """The YAML file `--preset` names: a bundled preset's, else the path given; `ConfigError` if neither."""
    if preset in bundled_presets():
        return PRESETS_DIR / f"{preset}.yaml"
    if Path(preset).expanduser().is_file():
        return Path(preset).expanduser()
    raise ConfigError(f"--preset must be a bundled preset ({', '.join(bundled_presets())}) or a YAML file, "
                      f"got {preset!r}")


def read_preset(preset: str, cache_dir: str) -> dict:
    """The preset's `{flag: value}`, `{cache_dir}` replaced by `cache_dir` made absolute."""
    values = read_flag_file(preset_file(preset), "--preset")
    for key in NOT_IN_PRESETS:
        if key in values:
            raise ConfigError(f"key {key!r} in --preset {preset!r}: a preset cannot name a preset or a config file")
    absolute = str(Path(cache_dir).resolve())
    return {key: value.replace(CACHE_DIR_PLACEHOLDER, absolute) if isinstance(value, str) else value
            for key, value in values.items()}


def read_flag_file(path: str | Path, flag: str) -> dict:
    """`{flag name: value}` from the YAML file given to `flag` (`--config` or `--preset`)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{flag} {str(path)!r} cannot be read: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{flag} {str(path)!r} must hold a mapping of flag names to values")
    return values


def as_flags(values: dict, origin: str, known: set[str]) -> list[str]:
    """Turn `{key: value}` into `--key=value` tokens; a key that is no flag is refused, naming `origin`."""
    tokens = []
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {origin}")
        for item in value if isinstance(value, list) else [] if value is None else [value]:  # a list: its flag repeated
            tokens.append(f"--{key}={item}")  # one token: a value starting with '-' stays a value
    return tokens

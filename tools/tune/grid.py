"""The grid file: recipe keys and the values to try; every combination is one point.

    top_p: [0.2, 0.25, 0.3]
    repetition_penalty: [1.2, 1.3]
    length_schedule: ["8:20,16:30,16:45", "40:30"]

Only settings that shape the captions may vary (the sections of the stages the registry marks `recipe`:
caption, rank, rerank and repair: sampling, lengths, seed, even the models); a point is named by a hash of its values, so reordering or extending the
grid keeps the points already done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from map_fns.flags import ConfigError
from map_fns.registry import STAGES

RECIPE_SECTIONS = tuple(stage.name for stage in STAGES if stage.recipe)
RECIPE_KEYS = tuple(f.name for stage in STAGES if stage.recipe for f in dataclasses.fields(stage.config))


@dataclass(frozen=True)
class Point:
    """One combination of grid values."""

    values: dict

    @property
    def name(self) -> str:
        """Stable across runs and grid orders: a hash of the values alone."""
        return hashlib.sha256(json.dumps(self.values, sort_keys=True).encode()).hexdigest()[:10]

    def flags(self) -> list[str]:
        return [f"--{key}={value}" for key, value in self.values.items()]

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.values.items())


def read_grid(path: str) -> dict[str, list]:
    """{recipe key: values} from the YAML file, or `ConfigError` naming what is wrong."""
    try:
        grid = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--grid {path!r} cannot be read: {str(err).splitlines()[0]}") from None
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"--grid {path!r} must map recipe keys to lists of values")
    for key, values in grid.items():
        if key not in RECIPE_KEYS:
            raise ConfigError(f"--grid key {key!r} is not a recipe setting; these can vary: {', '.join(RECIPE_KEYS)}")
        values = values if isinstance(values, list) else [values]
        if not values or any(value is None or isinstance(value, (dict, list)) for value in values):
            raise ConfigError(f"--grid key {key!r} needs one or more plain values, got {grid[key]!r}")
        if len(set(map(str, values))) < len(values):
            raise ConfigError(f"--grid key {key!r} repeats a value: {values!r}")
        grid[key] = values
    return grid


def grid_points(grid: dict[str, list]) -> list[Point]:
    """Every combination, the first key varying slowest."""
    return [Point(dict(zip(grid, combination))) for combination in itertools.product(*grid.values())]

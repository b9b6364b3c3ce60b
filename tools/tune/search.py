"""The grid search: each point is a full build of the images (its own output under DIR/points/NAME/, so the
build's resume covers a point killed half-way), then scored against the references.

A point is done when its `score.json` records the settings it was built with and the references it was
scored against; a re-run skips such points without loading a model, and re-scores (without rebuilding) one
whose references changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from builder.config import BuildConfig, ConfigError, parse_config
from builder.resume import run_settings
from output.durable import write_json_durably
from tools.tune.grid import Point
from tools.tune.scoring import PointScore, score_output

logger = logging.getLogger(__name__)

SCORE_FILE = "score.json"
POINT_DEFAULTS = ["--gallery_rows=0"]  # a point's output is scratch: no thumbnails to fetch


@dataclass(frozen=True)
class PlannedPoint:
    point: Point
    cfg: BuildConfig

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.run.output_dir)


def plan_points(points: list[Point], build_flags: list[str], output_dir: Path) -> list[PlannedPoint]:
    """Every point's build config, checked before any model loads; a bad value names its point."""
    planned = []
    for point in points:
        flags = [*POINT_DEFAULTS, *build_flags, f"--output_dir={output_dir / 'points' / point.name}", *point.flags()]
        try:
            cfg = parse_config(flags)
        except ConfigError as err:
            raise ConfigError(f"grid point {point.describe()}: {err}") from None
        if cfg.publish.push_to_hub:
            raise ConfigError("--push_to_hub is build.py's: a tuning run's outputs are scratch; push the build "
                              "made with the best point's YAML")
        planned.append(PlannedPoint(point, cfg))
    return planned


def references_fingerprint(references: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(references, sort_keys=True).encode()).hexdigest()


def done_score(planned: PlannedPoint, world_size: int, fingerprint: str) -> PointScore | None:
    """The point's score if it was made with these settings and references, else None."""
    path = planned.output_dir / SCORE_FILE
    if planned.cfg.run.overwrite or not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["settings"] != run_settings(planned.cfg, world_size) or saved["references"] != fingerprint:
        return None
    return PointScore(**saved["score"])


def run_point(planned: PlannedPoint, source, state, references: dict[str, list[str]], fingerprint: str
              ) -> PointScore | None:
    """Build (or resume, or find finished) the point's output on every process; the main process scores it
    and returns the score, the others None."""
    from builder.run import build

    build(planned.cfg, source, state)
    score = None
    if state.is_main_process:
        score = score_output(planned.output_dir, references)
        write_json_durably(planned.output_dir / SCORE_FILE, {
            "point": planned.point.values, "settings": run_settings(planned.cfg, state.num_processes),
            "references": fingerprint, "score": score.to_dict()})
    state.wait_for_everyone()
    return score


def search(planned: list[PlannedPoint], source, state, references: dict[str, list[str]]) -> list[PointScore]:
    """Scores of every point, in grid order (on the main process; the others get an empty list)."""
    from tqdm.auto import tqdm

    fingerprint = references_fingerprint(references)
    scores = []
    for item in tqdm(planned, desc="grid points", unit="point", disable=not state.is_main_process):
        score = done_score(item, state.num_processes, fingerprint)
        if score is not None:
            logger.info("point %s (%s): already scored, skipped", item.point.name, item.point.describe())
        else:
            logger.info("point %s (%s): building %s", item.point.name, item.point.describe(), item.output_dir)
            score = run_point(item, source, state, references, fingerprint)
        if score is not None and score.ok_rows and not score.scored_rows:
            raise ConfigError(f"none of the {score.ok_rows} captioned images of {item.output_dir} has references: "
                              f"--reference_key values must equal the images' URLs (references hold e.g. "
                              f"{next(iter(references))!r})")
        scores.append(score)
    return scores if state.is_main_process else []

"""The grid search: each point is a full build of the images (its own output under DIR/points/NAME/, so the
build's resume covers a point killed half-way), then scored against the references. Every process is a worker
of each point's build in turn; whoever sees a point finished scores it.

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
from output.layout import FINISHED_FILE
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


def done_score(planned: PlannedPoint, fingerprint: str) -> PointScore | None:
    """The point's score if it was made with these settings and references, else None."""
    path = planned.output_dir / SCORE_FILE
    if planned.cfg.run.overwrite or not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["settings"] != run_settings(planned.cfg) or saved["references"] != fingerprint:
        return None
    return PointScore(**saved["score"])


def run_point(planned: PlannedPoint, source, references: dict[str, list[str]], fingerprint: str) -> PointScore | None:
    """Work on the point's build as one of any number of workers; once it is finished (by this worker or
    another), score it. None if another worker is still finishing it: that worker scores it."""
    from builder.run import build

    build(planned.cfg, source, None)
    if not (planned.output_dir / FINISHED_FILE).exists():
        return None
    score = score_output(planned.output_dir, references)
    write_json_durably(planned.output_dir / SCORE_FILE, {
        "point": planned.point.values, "settings": run_settings(planned.cfg), "references": fingerprint,
        "score": score.to_dict()})
    return score


def search(planned: list[PlannedPoint], source, references: dict[str, list[str]]) -> list[PointScore | None]:
    """Scores of every point, in grid order; None for a point another worker is still finishing."""
    from tqdm.auto import tqdm

    from builder.cli import is_main_process

    fingerprint = references_fingerprint(references)
    scores = []
    for item in tqdm(planned, desc="grid points", unit="point", disable=not is_main_process()):
        score = done_score(item, fingerprint)
        if score is not None:
            logger.info("point %s (%s): already scored, skipped", item.point.name, item.point.describe())
        else:
            logger.info("point %s (%s): building %s", item.point.name, item.point.describe(), item.output_dir)
            score = run_point(item, source, references, fingerprint) or done_score(item, fingerprint)
        if score is not None and score.ok_rows and not score.scored_rows:
            raise ConfigError(f"none of the {score.ok_rows} captioned images of {item.output_dir} has references: "
                              f"--reference_key values must equal the images' URLs (references hold e.g. "
                              f"{next(iter(references))!r})")
        scores.append(score)
    return scores

"""Tune the recipe to a reference style.

    [accelerate launch [--config_file ...] -m] python -m tools.tune --references REF --grid grid.yaml \\
        --output_dir DIR [--images SOURCE] [any build.py flag]

Every build.py flag sets the recipe the grid varies from (`--preset tiny`, `--max_samples`, `--config`...).
Writes DIR/results.parquet, DIR/results.png and DIR/best.yaml (a preset: `build.py --preset DIR/best.yaml`),
prints the results table; re-running the same command skips the points already scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq

from builder.cli import failed
from builder.interrupt import RunInterrupted
from map_fns.flags import ConfigError, FlagParser
from tools.references import load_references
from builder.source import check_source
from tools.tune.grid import grid_points, read_grid
from tools.tune.results import (METRICS, NothingScored, best_index, format_table, plot_results, results_table,
                                  write_best_config)
from tools.tune.scoring import PointScore
from tools.tune.search import PlannedPoint, plan_points, search


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Tune's own flags, and the rest for build.py's parser."""
    parser = FlagParser(prog="python -m tools.tune", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", required=True,
                        help="human captions of the images: Hub dataset id or local parquet/jsonl/csv file or folder")
    parser.add_argument("--reference_key", help="its column holding the image URL (default: URL, url, coco_url or "
                                                "image_url)")
    parser.add_argument("--reference_column", help="its column of captions, a string or a list of strings per row "
                                                   "(default: captions, caption, sentences, TEXT or text)")
    parser.add_argument("--reference_split", default="train", help="split of a Hub or folder reference dataset")
    parser.add_argument("--grid", required=True, help="YAML file: recipe key -> list of values to try")
    parser.add_argument("--output_dir", required=True, help="where the points' outputs and the results go")
    parser.add_argument("--images", help="the images to caption: same as build.py's --source")
    parser.add_argument("--metric", default="rougeL", choices=METRICS, help="what picks the best point")
    args, build_flags = parser.parse_known_args(argv)
    if args.images:
        build_flags = [f"--source={args.images}", *build_flags]
    return args, build_flags


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, build_flags = parse_args(argv)
        planned = plan_points(grid_points(read_grid(args.grid)), build_flags, Path(args.output_dir))
        source = check_source(planned[0].cfg.source)
        references = load_references(args.references, args.reference_key, args.reference_column,
                                     args.reference_split)
    except ConfigError as err:
        return failed(err)

    from builder.claims import worker_id
    from builder.run import start_logging

    start_logging(worker_id())
    try:
        scores = search(planned, source, references)
        if None not in scores:  # else a worker still finishing a point writes the results once it scored it
            write_results(planned, scores, args.metric, Path(args.output_dir))
    except (ConfigError, RunInterrupted, NothingScored) as err:
        return failed(err)
    return 0


def write_results(planned: list[PlannedPoint], scores: list[PointScore], metric: str, output_dir: Path) -> None:
    """The table (parquet and printed), the plot and the best point's YAML."""
    best = best_index(scores, metric)
    points = [item.point for item in planned]
    table = results_table(points, scores)
    pq.write_table(table, output_dir / "results.parquet")
    plot_results(table, best, metric, output_dir / "results.png")
    write_best_config(planned[best].cfg.to_dict(), points[best], scores[best], metric, output_dir / "best.yaml")
    print(format_table(table, best, metric))
    print(f"\nresults: {output_dir / 'results.parquet'}, plot: {output_dir / 'results.png'}, "
          f"best point as a preset: build.py --preset {output_dir / 'best.yaml'}")


if __name__ == "__main__":
    sys.exit(main())

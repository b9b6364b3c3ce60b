"""What a tuning run leaves: the results table (parquet, and printed), a plot, and the best point as a YAML
preset for `build.py --preset`."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import yaml

from tools.tune.grid import RECIPE_SECTIONS, Point
from tools.tune.scoring import ROUGE_TYPES, PointScore

METRICS = ROUGE_TYPES
SHOWN = (*ROUGE_TYPES, "mean_words", "mean_first_similarity", "scored_rows")


def results_table(points: list[Point], scores: list[PointScore]) -> pa.Table:
    """One row per point: its name, its grid values (one column per key), its scores."""
    rows = [{"point": point.name, **point.values, **score.to_dict()} for point, score in zip(points, scores, strict=True)]
    return pa.Table.from_pylist(rows)


class NothingScored(RuntimeError):
    """No point has a score on the chosen metric: no captioned image had references."""


def best_index(scores: list[PointScore], metric: str) -> int:
    """The point with the highest `metric`; the earliest on a tie. Points nothing was scored for never win."""
    values = [getattr(score, metric) for score in scores]
    if all(value is None for value in values):
        raise NothingScored(f"no point scored any row on {metric}: no captioned image has references")
    return max(range(len(values)), key=lambda i: (values[i] is not None, values[i] or 0.0, -i))


def _cell(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(table: pa.Table, best: int, metric: str) -> str:
    """A markdown table, the best point marked."""
    keys = [name for name in table.column_names if name not in PointScore.__dataclass_fields__ and name != "point"]
    columns = ["point", *keys, *SHOWN]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for index, row in enumerate(table.to_pylist()):
        cells = [_cell(row[name]) for name in columns]
        if index == best:
            cells[0] = f"**{cells[0]}** (best {metric})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(table: pa.Table, best: int, metric: str, path: Path) -> None:
    """`metric` against mean caption length, one dot per point: how ROUGE trades against length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.to_pylist()
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
    try:
        for index, row in enumerate(rows):
            if row[metric] is None or row["mean_words"] is None:
                continue
            ax.scatter(row["mean_words"], row[metric], color="#c44e52" if index == best else "#4c72b0")
            ax.annotate(row["point"][:6], (row["mean_words"], row[metric]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(title=f"Grid points: {metric} vs caption length (best in red)", xlabel="mean words per caption",
               ylabel=f"mean {metric} F-measure")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_best_config(config: dict, point: Point, score: PointScore, metric: str, path: Path) -> None:
    """The best point's recipe (caption, rank, rerank and repair settings, models and seed included) as flat
    keys: a preset, `build.py --preset best.yaml` (or `--config best.yaml`, to combine with `--preset tiny`)."""
    flat = {key: value for section in RECIPE_SECTIONS for key, value in config[section].items()}
    header = (f"# Best grid point {point.name} ({point.describe()}): {metric} {getattr(score, metric):.4f} over "
              f"{score.scored_rows} images.\n# Use with: build.py --preset {path} --source ... --output_dir ...\n")
    path.write_text(header + yaml.safe_dump(flat, sort_keys=False))

"""The card's histograms as PNG files under plots/ beside the card (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never look for a display, even on a desktop

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from dataset_card.summary import CaptionSummary, Histogram  # noqa: E402
from output.durable import write_durably  # noqa: E402
from output.layout import plot_link, plots_dir  # noqa: E402


def plot_histogram(histogram: Histogram, path: Path, title: str, xlabel: str) -> None:
    """Bars of `histogram`, trimmed to the bins that hold rows; the old plot is replaced whole or not at all."""
    used = np.flatnonzero(histogram.counts)
    first, last = used[0], used[-1] + 1
    edges = histogram.edges[first:last + 1]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    try:
        ax.bar(edges[:-1], histogram.counts[first:last], width=np.diff(edges), align="edge", color="#4c72b0")
        ax.set(title=title, xlabel=xlabel, ylabel="rows")
        fig.tight_layout()
        write_durably(path, lambda temp: fig.savefig(temp, format="png"))
    finally:
        plt.close(fig)


def write_plots(target_dir: Path, summary: CaptionSummary) -> dict[str, str]:
    """Plot what has data into `target_dir/plots/`; returns {plot name: path relative to `target_dir`} for the
    card's links."""
    wanted = {
        "caption_words": (summary.caption_words, "Caption length (top_caption)", "words"),
        "first_ranker": (summary.first_ranker, "First ranker: best similarity (all_similarities[0])",
                         "cosine similarity"),
        "second_ranker": (summary.second_ranker, "Second ranker: similarity of the chosen caption",
                          "cosine similarity"),
    }
    plots_dir(target_dir).mkdir(parents=True, exist_ok=True)
    links = {}
    for name, (histogram, title, xlabel) in wanted.items():
        if histogram.n:
            links[name] = plot_link(name)
            plot_histogram(histogram, Path(target_dir) / links[name], title, xlabel)
    return links

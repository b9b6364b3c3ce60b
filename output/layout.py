"""Every path and file name of an output folder, spelled here and nowhere else:

    OUTPUT_DIR/
      data/train-RRRRR-CCCCC.parquet   the rows: chunk CCCCC of process RRRRR (.train-*.tmp while being written)
      progress/run.json                the first run's settings, which a resumed run must share
      progress/rank-RRRRR.json         how far process RRRRR got (chunks, rows, their stats)
      stats/rank-RRRRR.json            process RRRRR's counters, merged for the card and the log
      build_config.yaml                the resolved config
      README.md, plots/NAME.png        the dataset card and its histograms
      gallery.html                     sample rows to look at by eye
      .lock                            held by the run writing the folder

Paths are built from the output folder; patterns relative to it (for the Hub, whose repo mirrors the folder)
are constants.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = "data"
PROGRESS_DIR = "progress"
STATS_DIR = "stats"
PLOTS_DIR = "plots"
CARD = "README.md"
CONFIG_FILE = "build_config.yaml"
GALLERY = "gallery.html"
LOCK_FILE = ".lock"
RUN_FILE = "run.json"
SPLIT = "train"  # the only split; the Hub and `datasets` read it from the chunks' names

CHUNK_GLOB = f"{DATA_DIR}/{SPLIT}-*.parquet"  # finished chunks only: never a hidden temp file
STATS_GLOB = f"{STATS_DIR}/rank-*.json"
PLOTS_GLOB = f"{PLOTS_DIR}/*.png"
RUN_OUTPUTS = (DATA_DIR, PROGRESS_DIR, STATS_DIR, CARD, CONFIG_FILE)  # what --overwrite removes, nothing else
RECORDS = (PROGRESS_DIR, STATS_DIR)  # a run's bookkeeping, without its rows
PUSHED_DATA = (CHUNK_GLOB,)  # finished chunks only: never a temp file, never progress/
PUSHED_FINAL = (CONFIG_FILE, STATS_GLOB, PLOTS_GLOB, GALLERY)  # never a temp file; the card goes last, on its own
PUSHED_FOLDERS = (DATA_DIR, PLOTS_DIR)


def _rank(rank: int) -> str:
    return f"{rank:05d}"


def data_dir(output_dir: Path) -> Path:
    return Path(output_dir) / DATA_DIR


def chunk_path(output_dir: Path, rank: int, chunk: int) -> Path:
    return data_dir(output_dir) / f"{SPLIT}-{_rank(rank)}-{chunk:05d}.parquet"


def chunk_files(output_dir: Path) -> list[Path]:
    """The output's chunks, in (rank, chunk) order."""
    return sorted(Path(output_dir).glob(CHUNK_GLOB))


def chunks_of_rank(output_dir: Path, rank: int) -> dict[int, Path]:
    """Process `rank`'s chunks on disk, by chunk number."""
    paths = data_dir(output_dir).glob(f"{SPLIT}-{_rank(rank)}-*.parquet")
    return {int(path.stem.split("-")[2]): path for path in paths}


def chunk_temp_files(output_dir: Path, rank: int) -> list[Path]:
    """Chunks process `rank` had not finished writing (see `output.durable.temp_path`)."""
    return list(data_dir(output_dir).glob(f".{SPLIT}-{_rank(rank)}-*.tmp"))


def served_parquet_files(output_dir: Path) -> list[Path]:
    """Every parquet file in data/ the Hub would serve (hidden files are not pushed), ours or not, sorted."""
    return sorted(path for path in data_dir(output_dir).glob("*.parquet") if not path.name.startswith("."))


def run_record_path(output_dir: Path) -> Path:
    return Path(output_dir) / PROGRESS_DIR / RUN_FILE


def rank_record_path(output_dir: Path, rank: int) -> Path:
    return Path(output_dir) / PROGRESS_DIR / f"rank-{_rank(rank)}.json"


def stats_path(output_dir: Path, rank: int) -> Path:
    return Path(output_dir) / STATS_DIR / f"rank-{_rank(rank)}.json"


def stats_files(output_dir: Path) -> list[Path]:
    return sorted(Path(output_dir).glob(STATS_GLOB))


def config_path(output_dir: Path) -> Path:
    return Path(output_dir) / CONFIG_FILE


def card_path(output_dir: Path) -> Path:
    return Path(output_dir) / CARD


def plot_link(name: str) -> str:
    """Plot `name`'s path relative to the output folder: the card links to it as is."""
    return f"{PLOTS_DIR}/{name}.png"


def plots_dir(output_dir: Path) -> Path:
    return Path(output_dir) / PLOTS_DIR


def gallery_path(output_dir: Path) -> Path:
    return Path(output_dir) / GALLERY


def lock_path(output_dir: Path) -> Path:
    return Path(output_dir) / LOCK_FILE

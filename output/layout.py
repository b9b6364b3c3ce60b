"""Every path and file name of an output folder, spelled here and nowhere else:

    OUTPUT_DIR/                        a local folder or an fsspec URL (output.store)
      data/train-TTTTTT-CCCCC.parquet  the rows: chunk CCCCC of task TTTTTT (.train-*.tmp while being written locally)
      tasks/plan.json                  the task list, made by the first worker, reused by every later one
      tasks/run.json                   the first run's result-affecting settings, which every later worker must share
      tasks/progress/TTTTTT.json       how far task TTTTTT got (chunks, rows, their stats), after each chunk
      tasks/leases/TTTTTT.json         which worker holds task TTTTTT, and until when
      tasks/done/TTTTTT.json           task TTTTTT is complete (written after its last chunk)
      tasks/finishing.json             the worker finishing the run, and until when
      tasks/finished.json              the card, gallery and push are done
      stats.json                       every task's counters, merged
      build_config.yaml                the resolved config
      README.md, plots/NAME.png        the dataset card and its histograms
      gallery.html                     sample rows to look at by eye

Names are relative to the output folder (the Hub repo mirrors it); `output.store.OutputStore` turns them into
paths. The card, plots and gallery are rendered into a local folder first, so they also have `Path` helpers.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = "data"
TASKS_DIR = "tasks"
PLOTS_DIR = "plots"
CARD = "README.md"
CONFIG_FILE = "build_config.yaml"
GALLERY = "gallery.html"
STATS_FILE = "stats.json"
SPLIT = "train"  # the only split; the Hub and `datasets` read it from the chunks' names

PLAN_FILE = f"{TASKS_DIR}/plan.json"
RUN_FILE = f"{TASKS_DIR}/run.json"
FINISHING_FILE = f"{TASKS_DIR}/finishing.json"
FINISHED_FILE = f"{TASKS_DIR}/finished.json"
PROGRESS_GLOB = f"{TASKS_DIR}/progress/*.json"
DONE_GLOB = f"{TASKS_DIR}/done/*.json"
LEASE_GLOB = f"{TASKS_DIR}/leases/*.json"
OLD_LAYOUT_FILES = ("progress/run.json", "progress/rank-*.json")  # the per-process layout before tasks
OLD_LAYOUT_DIRS = ("progress", "stats")

CHUNK_GLOB = f"{DATA_DIR}/{SPLIT}-*.parquet"  # finished chunks only: never a hidden temp file
PLOTS_GLOB = f"{PLOTS_DIR}/*.png"
RUN_OUTPUTS = (DATA_DIR, TASKS_DIR, STATS_FILE, CARD, CONFIG_FILE)  # what --overwrite removes, nothing else
PUSHED_DATA = (CHUNK_GLOB,)  # finished chunks only: never a temp file, never tasks/
PUSHED_FINAL = (CONFIG_FILE, STATS_FILE, PLOTS_GLOB, GALLERY)  # never a temp file; the card goes last, on its own
PUSHED_FOLDERS = (DATA_DIR, PLOTS_DIR)


def _task(task: int) -> str:
    return f"{task:06d}"


def chunk_name(task: int, chunk: int) -> str:
    return f"{DATA_DIR}/{SPLIT}-{_task(task)}-{chunk:05d}.parquet"


def task_chunks_glob(task: int) -> str:
    return f"{DATA_DIR}/{SPLIT}-{_task(task)}-*.parquet"


def progress_name(task: int) -> str:
    return f"{TASKS_DIR}/progress/{_task(task)}.json"


def lease_name(task: int) -> str:
    return f"{TASKS_DIR}/leases/{_task(task)}.json"


def done_name(task: int) -> str:
    return f"{TASKS_DIR}/done/{_task(task)}.json"


def task_of(name: str) -> int:
    """The task number in a progress, lease, done or chunk name."""
    stem = name.rsplit("/", 1)[-1].split(".")[0]
    return int(stem.split("-")[1] if stem.startswith(f"{SPLIT}-") else stem)


def data_dir(output_dir: Path) -> Path:
    return Path(output_dir) / DATA_DIR


def chunk_path(output_dir: Path, task: int, chunk: int) -> Path:
    return Path(output_dir) / chunk_name(task, chunk)


def chunk_files(output_dir: Path) -> list[Path]:
    """A local output's chunks, in (task, chunk) order."""
    return sorted(Path(output_dir).glob(CHUNK_GLOB))


def served_parquet_files(output_dir: Path) -> list[Path]:
    """Every parquet file in data/ the Hub would serve (hidden files are not pushed), ours or not, sorted."""
    return sorted(path for path in data_dir(output_dir).glob("*.parquet") if not path.name.startswith("."))


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


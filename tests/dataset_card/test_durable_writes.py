"""README.md, its plots and gallery.html are replaced whole or not at all: a write that fails part-way (here
for real, past a file-size limit, as on a full disk) leaves the previous file as it was, and no temp file."""

import json
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace

from dataset_card.card import render_card, write_card
from dataset_card.gallery import render_gallery, write_gallery
from dataset_card.inputs import CardInputs
from tests.dataset_card.conftest import ENV, REPO, Output, url_row, write_output

# Writes past `limit` bytes into any one file fail with EFBIG (SIGXFSZ ignored, so the write raises instead of
# killing the process). The limit is set after the imports, so that only the write under test meets it.
WRITE_UNDER_LIMIT = """
import json, pickle, resource, signal, sys
from dataset_card.card import write_card
from dataset_card.gallery import write_gallery
from output.reader import local_chunks
what, output, limit = sys.argv[1], sys.argv[2], int(sys.argv[5])
inputs, stats = pickle.loads(bytes.fromhex(sys.argv[3])), json.loads(sys.argv[4])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
chunks = local_chunks(output)
write_card(output, chunks, inputs, stats) if what == "card" else write_gallery(output, chunks, inputs)
"""


def write_under_limit(what: str, output, limit: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITE_UNDER_LIMIT, what, str(output.path),
                           pickle.dumps(output.inputs).hex(), json.dumps(output.stats), str(limit)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)


def renamed(inputs: CardInputs, pretty_name: str) -> CardInputs:
    config = inputs.config
    return replace(inputs, pretty_name=pretty_name,
                   config={**config, "publish": {**config["publish"], "pretty_name": pretty_name}})


def hidden_files(folder) -> list:
    """Hidden files a write left."""
    return [path for path in folder.rglob(".*") if path.is_file()]


def long_output(path) -> Output:
    """An output whose card (60 examples of long texts) is larger than any of its plots."""
    rows = [url_row(f"http://example.invalid/{i}.jpg", f"alt-text {i} " * 40, caption=f"caption {i} " * 30)
            for i in range(60)]
    return write_output(path, rows, "--card_examples", "60")


def test_a_card_write_cut_off_by_a_full_disk_leaves_the_previous_card(tmp_path):
    output = long_output(tmp_path / "out")
    write_card(output.path, output.chunks, renamed(output.inputs, "The previous card"), output.stats)
    previous = (output.path / "README.md").read_bytes()
    output.inputs = renamed(output.inputs, "The next card")
    next_card = len(render_card(output.path, output.chunks, output.inputs, output.stats).encode())
    largest_plot = max(path.stat().st_size for path in output.path.glob("plots/*.png"))
    limit = (largest_plot + next_card) // 2
    assert largest_plot < limit < next_card  # the plots fit, the card does not

    failed = write_under_limit("card", output, limit)
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr[-2000:]
    assert (output.path / "README.md").read_bytes() == previous
    assert hidden_files(output.path) == []


def test_a_plot_write_cut_off_by_a_full_disk_leaves_the_previous_plots(tmp_path):
    output = long_output(tmp_path / "out")
    write_card(output.path, output.chunks, output.inputs, output.stats)
    previous = {path: path.read_bytes() for path in output.path.glob("plots/*.png")}
    assert len(previous) == 3

    failed = write_under_limit("card", output, min(len(png) for png in previous.values()) // 2)
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr[-2000:]
    assert {path: path.read_bytes() for path in output.path.glob("plots/*.png")} == previous
    assert hidden_files(output.path) == []


def test_a_gallery_write_cut_off_by_a_full_disk_leaves_the_previous_gallery(built, tmp_path):
    output = Output(shutil.copytree(built.path, tmp_path / "out"), built.inputs, built.stats)
    write_gallery(output.path, output.chunks, renamed(output.inputs, "The previous gallery"))
    previous = (output.path / "gallery.html").read_bytes()
    output.inputs = renamed(output.inputs, "The next gallery")
    next_gallery = len(render_gallery(output.chunks, output.inputs).encode())

    failed = write_under_limit("gallery", output, next_gallery // 2)
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr[-2000:]
    assert (output.path / "gallery.html").read_bytes() == previous
    assert hidden_files(output.path) == []

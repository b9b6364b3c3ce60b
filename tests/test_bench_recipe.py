"""Smoke test of `bench/recipe.py --tiny`: it runs end to end and prints every row of its table."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROWS = ("caption", "rank", "rerank", "repair", "end to end", "reference")


def test_tiny_recipe_benchmark_prints_its_table(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "recipe.py"), "--tiny", "--cache_dir", str(tmp_path),
           "--images", "4", "--batch_size", "2", "--reference_images", "1", "--json", str(tmp_path / "r.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    table = {}
    for line in out.stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in ROWS:
            table[cells[0]] = cells
    assert set(table) == set(ROWS), out.stdout
    for label, cells in table.items():
        images, seconds, per_second, ms_per_image = (float(x) for x in cells[1:5])
        assert images > 0 and seconds > 0 and per_second > 0 and ms_per_image > 0, cells
        if label != "reference":
            assert float(cells[5]) > 0 and float(cells[6]) > 0, cells  # GFLOP/image, TFLOP/s
    assert float(table["end to end"][1]) == 4 and float(table["reference"][1]) == 1
    ratio = re.search(r"fast / reference \(end to end\): ([0-9.e+-]+)x", out.stdout)
    assert ratio and float(ratio.group(1)) > 0, out.stdout
    assert (tmp_path / "r.json").is_file()

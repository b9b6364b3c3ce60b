"""The blocklist benchmark runs at a small size and prints its table: both implementations, which must agree on
every hit (the script checks that itself), and their ratio."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_blocklist_benchmark_prints_both_implementations_and_their_ratio(tmp_path):
    proc = subprocess.run([sys.executable, "bench/blocklist.py", "--entries", "3000", "--batches", "2", "--images",
                           "4", "--cache_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| 3,000 |")]
    assert [cells[1].strip() for cells in rows] == ["set", "blocklist", "blocklist / set"]
    hits = {cells[1].strip(): (cells[9].strip(), cells[10].strip()) for cells in rows[:2]}
    assert hits["set"] == hits["blocklist"] and int(hits["set"][0]) > 0

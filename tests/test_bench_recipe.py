"""Smoke tests of `bench/recipe.py --tiny`: it runs end to end and prints every row of its tables."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


CAPTIONER_ROWS = ("BLIP (blip)", "GIT (git)", "Qwen2-VL (qwen2_vl)")


def test_tiny_captioner_comparison_prints_a_row_per_captioner(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "recipe.py"), "--tiny", "--captioner", "git,qwen2_vl",
           "--cache_dir", str(tmp_path), "--images", "1", "--batch_size", "1", "--num_candidates", "2",
           "--warmup_images", "0", "--json", str(tmp_path / "r.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    lines = out.stdout.splitlines()
    header = next(re.split(r"\s{2,}", line.strip()) for line in lines if re.match(r"captioner {2,}\S", line))
    table = {}
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in CAPTIONER_ROWS:
            table[cells[0]] = dict(zip(header, cells))
    assert set(table) == set(CAPTIONER_ROWS), out.stdout
    assert "2 candidates per image" in out.stdout
    for label, row in table.items():
        for column in ("M params", "images/s", "caption ms/image", "rank ms/image", "repair ms/image",
                       "caption GFLOP/image", "end to end GFLOP/image", "candidates/image", "words/candidate"):
            assert float(row[column]) > 0, (label, column, row)
        for column in ("caption time vs BLIP", "caption FLOPs vs BLIP", "end to end vs BLIP"):
            assert float(row[column].removesuffix("x")) > 0, (label, column, row)
    assert table["BLIP (blip)"]["caption FLOPs vs BLIP"] == "1x"
    # the three captioners are different models: their caption FLOPs differ
    assert len({row["caption GFLOP/image"] for row in table.values()}) == 3, table


def test_captioner_names_resolve_to_model_types_blip_first():
    from bench.recipe import captioner_model_types

    assert captioner_model_types("Qwen2-VL, git", tiny=True) == ["blip", "qwen2_vl", "git"]
    assert captioner_model_types("git,blip,GIT", tiny=False) == ["blip", "git"]


@pytest.mark.parametrize(("spec", "message"), [
    ("gpt2", "--captioner 'gpt2' is not a captioner family"),
    ("llava", "--captioner 'llava': no tiny llava model is built here (available: blip, "),
])
def test_captioner_names_without_a_model_are_refused(spec, message):
    from bench.recipe import captioner_model_types

    with pytest.raises(ValueError, match=re.escape(message)):
        captioner_model_types(spec, tiny=True)

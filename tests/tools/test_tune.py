"""`python -m tools.tune` on the bundled sample with tiny models: the table, the scores, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from rouge_score.rouge_scorer import RougeScorer

from builder.config import ConfigError, parse_config
from tools.references import load_references
from builder.source import bundled_sample
from builder.tiny_models import caption_corpus
from tools.tune.__main__ import main as tune_main
from tools.tune.grid import Point, grid_points, read_grid
from tools.tune.results import write_best_config
from tools.tune.scoring import PointScore

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# One batch a point; no repair, so top_caption is the captioner's own words (the tiny repairer glues pieces
# into non-words, and the test needs captions that can share words with the references).
FAST = ["--num_candidates", "4", "--keep_top", "2", "--batch_size", "8", "--max_samples", "8", "--repairer", "none"]


def _tune(tmp_path: Path, tiny_models, grid: dict, references: Path, *extra: str) -> subprocess.CompletedProcess:
    grid_file = tmp_path / f"grid-{len(grid_points(grid))}.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    return subprocess.run(
        [sys.executable, "-m", "tools.tune", "--preset", "tiny", "--cache_dir",
         str(Path(tiny_models.captioner).parents[1]), "--references", str(references), "--grid", str(grid_file),
         "--output_dir", str(tmp_path / "tune"), *FAST, *extra],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)


@pytest.fixture
def references(tmp_path) -> Path:
    """Per sample URL: a caption-like sentence in the tiny models' words, and one holding all of those words,
    so every caption made of whole words shares some with its references and ROUGE is not zero."""
    urls = pq.read_table(bundled_sample(), columns=["URL"])["URL"].to_pylist()
    sentences = caption_corpus()
    vocabulary = " ".join(sorted({word for sentence in sentences for word in sentence.split()}))
    path = tmp_path / "references.jsonl"
    path.write_text("".join(json.dumps({"url": url, "captions": [sentences[i], vocabulary]}) + "\n"
                            for i, url in enumerate(urls)))
    return path


def _expected(point_dir: Path, references: dict[str, list[str]]) -> dict:
    """The point's scores recomputed straight from its parquet with the library."""
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = [row for row in pq.read_table(sorted(point_dir.glob("data/*.parquet"))).to_pylist() if row["status"] == "ok"]
    scores = [scorer.score_multi(references[row["URL"]], row["top_caption"]) for row in rows]
    return {"rouge1": sum(s["rouge1"].fmeasure for s in scores) / len(scores),
            "rouge2": sum(s["rouge2"].fmeasure for s in scores) / len(scores),
            "rougeL": sum(s["rougeL"].fmeasure for s in scores) / len(scores),
            "mean_words": sum(len(row["top_caption"].split()) for row in rows) / len(rows),
            "mean_first_similarity": sum(row["all_similarities"][0] for row in rows) / len(rows),
            "scored_rows": len(rows)}


@pytest.mark.timeout(400)
def test_two_point_grid_scores_with_the_library_picks_the_best_and_resumes_per_point(tmp_path, tiny_models,
                                                                                   references):
    grid = {"top_p": [0.2427084604681384, 0.9]}
    proc = _tune(tmp_path, tiny_models, grid, references)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "tune"
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [row["top_p"] for row in table] == grid["top_p"]
    refs = load_references(str(references))
    for row in table:
        assert row["point"] in proc.stdout
        expected = _expected(out / "points" / row["point"], refs)
        assert {key: row[key] for key in expected} == pytest.approx(expected, abs=1e-12)
        assert row["rows"] == row["ok_rows"] == 8
    assert max(row["rouge1"] for row in table) > 0  # the check above compared real scores, not zeros

    best = max(table, key=lambda row: row["rougeL"])
    assert f"**{best['point']}** (best rougeL)" in proc.stdout
    cfg = parse_config(["--config", str(out / "best.yaml"), "--output_dir", str(tmp_path / "build")])
    assert (cfg.caption.top_p, cfg.caption.num_candidates, cfg.rank.keep_top) == (best["top_p"], 4, 2)
    assert Image.open(out / "results.png").format == "PNG"

    # A third value: the two points done are skipped (their outputs untouched), only the new one is built.
    done = {path: path.stat().st_mtime_ns for path in out.glob("points/*/data/*.parquet")}
    proc = _tune(tmp_path, tiny_models, {"top_p": [*grid["top_p"], 0.5]}, references)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("already scored, skipped") == 2
    assert {path: path.stat().st_mtime_ns for path in done} == done
    assert [row["top_p"] for row in pq.read_table(out / "results.parquet").to_pylist()] == [*grid["top_p"], 0.5]


@pytest.mark.parametrize("grid, message", [
    ({"output_dir": ["a", "b"]}, "--grid key 'output_dir' is not a recipe setting; these can vary: captioner, "),
    ({"top_p": []}, "--grid key 'top_p' needs one or more plain values, got []"),
    ({"top_p": [0.3, 0.3]}, "--grid key 'top_p' repeats a value: [0.3, 0.3]"),
    ({"top_p": [0.3, 2.0]}, "grid point top_p=2.0: --top_p must be in (0, 1], got 2.0"),
])
def test_a_bad_grid_is_refused_before_any_work(tmp_path, references, capsys, grid, message):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    code = tune_main(["--references", str(references), "--grid", str(grid_file), "--output_dir",
                      str(tmp_path / "tune")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "tune").exists()


def test_references_that_match_no_image_stop_after_the_first_point(tmp_path, tiny_models):
    refs = tmp_path / "refs.csv"
    refs.write_text("image_url,caption\nhttps://example.org/a.jpg,a cat on a mat\n")
    proc = _tune(tmp_path, tiny_models, {"top_p": [0.3, 0.4]}, refs)
    assert proc.returncode == 2
    assert "none of the 8 captioned images" in proc.stderr and "'https://example.org/a.jpg'" in proc.stderr
    assert len(list((tmp_path / "tune" / "points").iterdir())) == 1


def test_references_load_from_rows_per_caption_and_from_lists(tmp_path):
    per_caption = tmp_path / "coco.parquet"
    pq.write_table(pa.table({"coco_url": ["u1", "u1", "u2", None], "caption": ["a b", " c  d ", "", "x"]}),
                   per_caption)
    assert load_references(str(per_caption)) == {"u1": ["a b", "c d"]}
    lists = tmp_path / "lists.jsonl"
    lists.write_text('{"URL": "u1", "sentences": ["one", "two"]}\n{"URL": "u2", "sentences": null}\n')
    assert load_references(str(lists)) == {"u1": ["one", "two"]}


def test_a_named_reference_column_that_is_not_there_is_named(tmp_path):
    path = tmp_path / "refs.jsonl"
    path.write_text('{"URL": "u1", "caption": "a dog"}\n')
    with pytest.raises(ConfigError, match="--reference_key 'nope' is not a column of .* \\(columns: URL, caption\\)"):
        load_references(str(path), key_column="nope")


def test_references_without_any_caption_are_refused(tmp_path):
    path = tmp_path / "refs.jsonl"
    path.write_text('{"URL": "u1", "caption": " "}\n{"URL": null, "caption": "a dog"}\n')
    with pytest.raises(ConfigError, match="holds no caption in column 'caption'"):
        load_references(str(path))


def test_missing_references_and_odd_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="neither a local file or folder nor a Hub dataset id"):
        load_references(str(tmp_path / "missing" / "refs.jsonl"))
    odd = tmp_path / "refs.txt"
    odd.write_text("hello")
    with pytest.raises(ConfigError, match=r"unknown file type '\.txt'"):
        load_references(str(odd))


def test_points_are_every_combination_named_by_their_values_alone(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("top_p: [0.2, 0.3]\nrepetition_penalty: 1.2\nlength_schedule: ['8:20,16:30,16:45', '40:30']\n")
    points = grid_points(read_grid(str(path)))
    assert [p.values for p in points] == [
        {"top_p": 0.2, "repetition_penalty": 1.2, "length_schedule": "8:20,16:30,16:45"},
        {"top_p": 0.2, "repetition_penalty": 1.2, "length_schedule": "40:30"},
        {"top_p": 0.3, "repetition_penalty": 1.2, "length_schedule": "8:20,16:30,16:45"},
        {"top_p": 0.3, "repetition_penalty": 1.2, "length_schedule": "40:30"},
    ]
    reordered = grid_points({"length_schedule": ["40:30"], "repetition_penalty": [1.2], "top_p": [0.3]})
    assert reordered[0].name == points[3].name
    assert len({p.name for p in points}) == 4


def test_tune_flags_are_checked_in_one_line(tmp_path, capsys):
    code = tune_main(["--grid", str(tmp_path / "grid.yaml"), "--output_dir", str(tmp_path / "tune")])
    assert code == 2
    assert capsys.readouterr().err == "error: the following arguments are required: --references\n"


def test_best_yaml_is_a_preset_and_flags_still_win(tmp_path):
    """What the tuning run writes for its best point, read back by build.py's `--preset`: every recipe value
    (a tiny run's models under its cache dir, a prompt that starts with a dash) comes back as it was."""
    cfg = parse_config(["--output_dir", str(tmp_path / "point"), "--preset", "tiny", "--cache_dir",
                        str(tmp_path / "cache"), "--top_p", "0.3", "--num_candidates", "8", "--keep_top", "2",
                        "--length_schedule", "1:5,2:7", "--caption_prompt=- a photo of ", "--reranker", "none",
                        "--seed", "7"])
    score = PointScore(rows=8, ok_rows=8, scored_rows=8, rouge1=0.5, rouge2=0.25, rougeL=0.4, mean_words=9.0,
                       mean_first_similarity=0.3)
    best = tmp_path / "tune" / "best.yaml"
    best.parent.mkdir()
    write_best_config(cfg.to_dict(), Point({"top_p": 0.3}), score, "rougeL", best)
    assert f"build.py --preset {best}" in best.read_text()

    built = parse_config(["--preset", str(best), "--output_dir", str(tmp_path / "build")])
    assert built.run.preset == str(best)
    for section in ("caption", "rank", "rerank", "repair"):
        assert getattr(built, section) == getattr(cfg, section), section
    assert built.caption.seed == 7 and built.caption.captioner.startswith(str(tmp_path / "cache"))

    flagged = parse_config(["--preset", str(best), "--output_dir", str(tmp_path / "build"), "--top_p", "0.9"])
    assert (flagged.caption.top_p, flagged.caption.num_candidates) == (0.9, 8)

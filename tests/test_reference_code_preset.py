"""A whole build with the laion-idle-cap preset's settings (tiny models in place of its model ids): one ranking
stage, every candidate stored with its similarity, SimpleT5's repair settings."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard

from builder.flag_files import preset_file
from map_fns.flags import NONE
from map_fns.registry import STAGES

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]
MODEL_FLAGS = {stage.model for stage in STAGES if stage.model}
KEEP_TOP = 3  # below the candidates a row gets, so that the shortlist and the stored candidates differ


def _reference_settings() -> dict:
    """The preset's values but its model ids (a stage it switches off stays off): the tiny preset's models run
    them. The tiny T5 never writes its end token, so SimpleT5's 511-token repairs would take minutes: 8 here."""
    values = yaml.safe_load(preset_file("laion-idle-cap").read_text())
    settings = {key: value for key, value in values.items() if key not in MODEL_FLAGS or value == NONE}
    assert settings["reranker"] == NONE and settings["keep_all_candidates"] is True
    return {**settings, "repair_max_new_tokens": 8, "keep_top": KEEP_TOP}


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_images, tiny_models):
    rows = [(name, sample_images[name].data, "ok") for name in ("jpeg_rgb", "png_rgba", "webp", "jpeg_exif6")]
    rows.insert(2, ("corrupt", b"\xff\xd8\xff\xe0 not the rest of a JPEG", "decode_error"))
    folder = tmp_path_factory.mktemp("reference-preset")
    source = folder / "source.parquet"
    pq.write_table(pa.table({
        "url": [f"https://example.invalid/{name}" for name, _, _ in rows],
        "caption": [f"alt text of {name}" for name, _, _ in rows],
        "image": pa.array([data for _, data, _ in rows], pa.binary()),
    }), source)
    config = folder / "reference.yaml"
    config.write_text(yaml.safe_dump(_reference_settings()))
    output = folder / "out"
    proc = subprocess.run(
        [sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--config", str(config), "--source", str(source), "--output_dir", str(output), "--num_candidates", "8",
         "--length_schedule", "4:6,4:10"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pa.concat_tables(pq.read_table(path) for path in sorted((output / "data").glob("*.parquet")))
    return rows, output, table


def test_every_candidate_is_stored_with_the_similarity_it_was_ranked_by(built):
    rows, _, table = built
    assert table.column("URL").to_pylist() == [f"https://example.invalid/{name}" for name, _, _ in rows]
    assert table.column("status").to_pylist() == [status for _, _, status in rows]
    for row in table.to_pylist():
        if row["status"] != "ok":
            assert row["candidates"] is None and row["candidate_similarities"] is None
            continue
        candidates, similarities = row["candidates"], row["candidate_similarities"]
        assert len(candidates) == len(similarities) > KEEP_TOP  # the tiny BLIP's 8 samples differ
        assert len(set(candidates)) == len(candidates) and all(candidates)
        best_first = sorted(range(len(candidates)), key=lambda i: -similarities[i])
        assert row["all_captions"] == [candidates[i] for i in best_first[:KEEP_TOP]]
        assert row["all_similarities"] == [similarities[i] for i in best_first[:KEEP_TOP]]
        # one ranking stage: the best of all candidates is the caption, and nothing was reranked
        assert row["top_caption_raw"] == candidates[best_first[0]]
        assert row["rerank_similarities"] is None
        assert row["top_caption"]


def test_schema_card_and_saved_config_carry_the_reference_settings(built):
    _, output, table = built
    schemas = {pq.read_schema(path) for path in (output / "data").glob("*.parquet")}
    assert len(schemas) == 1
    assert table.schema.names[-2:] == ["candidates", "candidate_similarities"]
    assert table.schema.field("candidates").type == pa.list_(pa.string())
    assert table.schema.field("candidate_similarities").type == pa.list_(pa.float64())

    card = (output / "README.md").read_text()
    features = {feature["name"]: feature for feature in DatasetCard.load(output / "README.md").data.dataset_info["features"]}
    assert features["candidates"]["list"] == "string" and features["candidate_similarities"]["list"] == "float64"
    assert "no second ranker" in card and "a second CLIP model" not in card
    assert "| `candidates` | list<string> | every unique sampled candidate" in card

    saved = yaml.safe_load((output / "build_config.yaml").read_text())
    assert {key: saved[key] for key in _reference_settings()} == _reference_settings()

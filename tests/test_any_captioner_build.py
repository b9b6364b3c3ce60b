"""Whole builds (`build.main`, in this process) with captioners other than BLIP: the tiny preset's rankers and
repairer around a tiny BLIP-2, GIT or Qwen2-VL (`builder.tiny_captioners`), loaded from a local folder through the
product's loader.

Qwen2-VL runs the nastiest everyday case of a chat model: one candidate per image, a long caption (up to 120
tokens, beyond CLIP's 77-token context), asked with a custom prompt."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from open_clip.tokenizer import SimpleTokenizer

import build
from builder.tiny_captioners import TINY_FAMILIES, build_tiny_captioner
from map_fns.captioners import family_of
from map_fns.rank import RankConfig

IMAGES = ("jpeg_rgb", "png_rgba", "webp", "jpeg_exif6")
LONG_PROMPT = "Describe everything in this picture."
FLAGS = {
    "blip-2": ["--num_candidates", "6", "--length_schedule", "3:8,3:12"],
    "git": ["--num_candidates", "6", "--length_schedule", "3:8,3:12"],
    "qwen2_vl": ["--num_candidates", "1", "--length_schedule", "1:120", "--caption_prompt", LONG_PROMPT],
}


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def built(request, tmp_path_factory, sample_images, tiny_models):
    model_type = request.param
    folder = tmp_path_factory.mktemp(f"build-{model_type}")
    captioner = build_tiny_captioner(model_type, folder / "models")
    source = folder / "source.parquet"
    pq.write_table(pa.table({
        "url": [f"https://example.invalid/{name}" for name in IMAGES],
        "caption": [f"alt text of {name}" for name in IMAGES],
        "image": pa.array([sample_images[name].data for name in IMAGES], pa.binary()),
    }), source)
    output = folder / "out"
    assert build.main(["--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
                       "--captioner", captioner, "--source", str(source), "--output_dir", str(output),
                       *FLAGS[model_type]]) == 0
    table = pa.concat_tables(pq.read_table(path) for path in sorted((output / "data").glob("*.parquet")))
    return model_type, output, table.to_pylist()


def test_every_row_is_captioned_ranked_and_repaired(built):
    model_type, _, rows = built
    assert [row["URL"] for row in rows] == [f"https://example.invalid/{name}" for name in IMAGES]
    assert all(row["status"] == "ok" for row in rows), [(row["status"], row["error"]) for row in rows]
    for row in rows:
        assert 1 <= len(row["all_captions"]) <= RankConfig().keep_top and all(row["all_captions"])
        assert len(row["all_similarities"]) == len(row["all_captions"])
        assert row["top_caption_raw"] in row["all_captions"] and row["top_caption"]


@pytest.mark.parametrize("built", ["qwen2_vl"], indirect=True)
def test_one_long_caption_per_image_is_kept_whole_and_scored(built):
    _, _, rows = built
    for row in rows:
        assert len(row["all_captions"]) == 1 and row["top_caption_raw"] == row["all_captions"][0]
    longest = max((row["all_captions"][0] for row in rows), key=len)
    assert len(SimpleTokenizer().encode(longest)) > 77  # beyond CLIP's context: stored whole, scored truncated


def test_the_card_names_the_family_and_the_prompt(built):
    model_type, output, _ = built
    card = (output / "README.md").read_text()
    family = family_of(model_type)
    assert f"was made: a {family.name}\ncaptioner sampled" in card
    if family.chat:
        assert f"(asked `{LONG_PROMPT!r}`)" in card and f"| `caption_prompt` | `{LONG_PROMPT!r}` |" in card
    elif family.prompt:
        assert f"(after the prompt `{family.prompt!r}`)" in card
    else:
        assert "candidate captions per image, a CLIP model" in card and "| `caption_prompt` | `''` |" in card

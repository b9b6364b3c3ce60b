"""The screen stage: scores from each image's CLIP embedding through the heads, a threshold that keeps images from
being captioned, and the ranker reusing the embedding instead of running its image tower again."""

import dataclasses

import open_clip
import pytest
import torch
from PIL import Image

from builder.tiny_heads import build_tiny_head
from map_fns.clip_score import shared_scorer
from map_fns.flags import ConfigError
from map_fns.rank import RankConfig, make_rank_fn
from map_fns.screen import ScreenConfig, make_screen_fn
from map_fns.status import FETCH_ERROR, FILTERED, OK

COLOURS = ["red", "navy", "olive", "white", "teal", "orange"]


@pytest.fixture(scope="module")
def batch():
    images = [Image.new("RGB", (40 + 7 * i, 30 + 5 * i), colour) for i, colour in enumerate(COLOURS)]
    images[2] = None  # a row that failed to fetch: no image, untouched
    status = [OK, OK, FETCH_ERROR, OK, OK, OK]
    return {"status": status, "error": [None, None, "HTTP 404", None, None, None], "_image": images}


def tiny_screen(tiny_models, **changes) -> ScreenConfig:
    return dataclasses.replace(ScreenConfig(screen_clip=tiny_models.ranker, punsafe_head=tiny_models.punsafe_head,
                                            aesthetic_head=tiny_models.aesthetic_head), **changes)


def by_hand(tiny_models, images: list) -> dict[str, list[float]]:
    """The scores computed from scratch: open_clip's own preprocessing and image tower, then each head."""
    from map_fns.embedding_heads import load_head

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_models.ranker, device="cpu")
    model.eval()
    with torch.no_grad():
        embeddings = model.encode_image(torch.stack([preprocess(image) for image in images]))
    return {"punsafe_pred": load_head(tiny_models.punsafe_head, "punsafe", "cpu")(embeddings),
            "aesthetic": load_head(tiny_models.aesthetic_head, "aesthetic", "cpu")(embeddings)}


def test_the_heads_score_each_ok_image_from_its_clip_embedding(batch, tiny_models):
    out = make_screen_fn(tiny_screen(tiny_models), "cpu")(batch)
    ok = [i for i, status in enumerate(batch["status"]) if status == OK]
    expected = by_hand(tiny_models, [batch["_image"][i] for i in ok])
    for column in ("punsafe_pred", "aesthetic"):
        assert out[column][2] is None
        assert [out[column][i] for i in ok] == pytest.approx(expected[column], abs=1e-6)
    assert len(set(out["punsafe_pred"][i] for i in ok)) == len(ok)  # the images' own scores, not one for all
    assert out["status"] == batch["status"] and out["error"] == batch["error"]
    assert out["_image_embedding"][2] is None
    assert all(out["_image_embedding"][i].model == tiny_models.ranker for i in ok)


def test_an_image_over_max_punsafe_pred_is_filtered_with_its_score(batch, tiny_models):
    scores = make_screen_fn(tiny_screen(tiny_models), "cpu")(batch)["punsafe_pred"]
    ranked = sorted(score for score in scores if score is not None)
    limit = (ranked[1] + ranked[2]) / 2  # two images at or below it, three above
    out = make_screen_fn(tiny_screen(tiny_models, max_punsafe_pred=limit), "cpu")(batch)
    above = [i for i, score in enumerate(scores) if score is not None and score > limit]
    assert len(above) == 3
    assert [i for i, status in enumerate(out["status"]) if status == FILTERED] == above
    for i in above:
        assert out["error"][i] == f"punsafe_pred {scores[i]:.3f} is above --max_punsafe_pred {limit:g}"
        assert out["punsafe_pred"][i] == scores[i]  # the score that kept it out is in its row
    assert out["status"][2] == FETCH_ERROR and out["error"][2] == "HTTP 404"


def test_no_head_loads_no_model_and_scores_nothing(batch, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("no head: no CLIP may load")

    monkeypatch.setattr("map_fns.clip_score.shared_scorer", no_model)
    out = make_screen_fn(ScreenConfig(punsafe_head="none", aesthetic_head="none"), "cpu")(batch)
    assert out["punsafe_pred"] == out["aesthetic"] == out["_image_embedding"] == [None] * 6
    assert out["status"] == batch["status"]


def test_one_head_alone(batch, tiny_models):
    out = make_screen_fn(tiny_screen(tiny_models, punsafe_head="none"), "cpu")(batch)
    assert out["punsafe_pred"] == [None] * 6 and out["aesthetic"][0] is not None


def test_a_head_of_another_width_than_the_clip_is_refused_at_load(tiny_models, tmp_path):
    wide = build_tiny_head("punsafe", 768, tmp_path)
    with pytest.raises(ConfigError) as err:
        make_screen_fn(tiny_screen(tiny_models, punsafe_head=wide), "cpu")
    assert str(err.value) == (f"--punsafe_head {wide!r} reads 768-wide embeddings, but --screen_clip "
                              f"{tiny_models.ranker!r} makes 32-wide ones (the heads LAION published read "
                              "ViT-L-14/openai's 768)")


def test_a_threshold_without_its_head_is_refused():
    with pytest.raises(ConfigError, match="--max_punsafe_pred 0.5 needs a --punsafe_head, got 'none'"):
        ScreenConfig(punsafe_head="none", max_punsafe_pred=0.5)


def test_the_ranker_reuses_the_embeddings_and_scores_as_without_them(batch, tiny_models):
    screened = {**batch, **make_screen_fn(tiny_screen(tiny_models), "cpu")(batch)}
    candidates = [["a red square", "a blue sky", "x"]] * 6
    rank = make_rank_fn(RankConfig(ranker=tiny_models.ranker, keep_top=3), "cpu")
    scorer = shared_scorer(tiny_models.ranker, "cpu", dtype=torch.float32)  # the one the ranker holds
    towers = []
    real = scorer.model.encode_image
    scorer.model.encode_image = lambda pixels: towers.append(len(pixels)) or real(pixels)
    try:
        reused = rank({**screened, "_candidates": candidates})
        assert towers == []  # every ok image came with its embedding
        fresh = rank({**batch, "_candidates": candidates})
        assert towers == [5]
    finally:
        del scorer.model.encode_image
    for i in (0, 1, 3, 4, 5):
        assert reused["all_captions"][i] == fresh["all_captions"][i]
        assert reused["all_similarities"][i] == pytest.approx(fresh["all_similarities"][i], abs=1e-6)

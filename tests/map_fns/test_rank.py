import math
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

import map_fns.rank as rank_module
import map_fns.rerank as rerank_module
from map_fns.clip_score import ClipScorer, needs_quick_gelu, parse_clip_spec
from map_fns.rank import RankConfig, make_rank_fn, top_k_by_score
from map_fns.rerank import RerankConfig, best_index, make_rerank_fn
from map_fns.status import FETCH_ERROR, NO_CAPTION, OK


# --- spec parsing and configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("ViT-L-14/openai", ("ViT-L-14", "openai")),
        ("RN50x64/openai", ("RN50x64", "openai")),
        ("hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", ("hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", None)),
        ("local-dir:/models/clip", ("local-dir:/models/clip", None)),
    ],
)
def test_parse_clip_spec(spec, expected):
    assert parse_clip_spec(spec) == expected


def test_parse_clip_spec_accepts_a_checkpoint_path_as_pretrained():
    assert parse_clip_spec("RN50x64//models/rn50x64.pt") == ("RN50x64", "/models/rn50x64.pt")


@pytest.mark.parametrize(
    "spec",
    ["", "ViT-L-14", "/openai", "ViT-L-14/", " ViT-L-14/openai", "hf-hub:", "hf-hub:org", "hf-hub:a/b/c",
     "local-dir:", "local_dir:/models/clip", "hf_hub:org/repo"],
)
def test_parse_clip_spec_rejects_malformed(spec):
    with pytest.raises(ValueError) as err:
        parse_clip_spec(spec)
    assert repr(spec) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["ViT-L-15/openai", "ViT-L-14/no-such-tag"])
def test_unknown_model_or_tag_fails_at_load_before_any_download(spec):
    with pytest.raises(RuntimeError, match="not found|not a known tag"):
        ClipScorer(spec, "cpu")


def test_flag_checking_imports_no_torch():
    code = (
        "import sys, map_fns.rank, map_fns.rerank; "
        "map_fns.rank.RankConfig(); map_fns.rerank.RerankConfig(); "
        "print(sorted({'torch', 'open_clip', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_needs_quick_gelu_follows_the_pretrained_tag():
    assert needs_quick_gelu("ViT-L-14", "openai") and needs_quick_gelu("RN50x64", "openai")
    assert not needs_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    assert not needs_quick_gelu("local-dir:/x", None)


def test_configs_default_to_laion_coco_models():
    assert (RankConfig().ranker, RankConfig().keep_top, RankConfig().keep_all_candidates) == ("ViT-L-14/openai", 5, False)
    assert RerankConfig().reranker == "RN50x64/openai"
    assert RerankConfig(reranker="none").reranker == "none"


@pytest.mark.parametrize(
    "make, flag",
    [
        (lambda: RankConfig(ranker="ViT-L-14"), "--ranker"),
        (lambda: RankConfig(keep_top=0), "--keep_top"),
        (lambda: RankConfig(keep_top=2.5), "--keep_top"),
        (lambda: RerankConfig(reranker="RN50x64"), "--reranker"),
        (lambda: RerankConfig(reranker="None"), "--reranker"),
    ],
)
def test_configs_reject_bad_values_naming_the_flag(make, flag):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)


# --- selection logic on constructed embeddings -----------------------------------------------------------


def _cosines_at_angles(degrees: list[float]) -> list[float]:
    """Similarities of captions whose unit embeddings sit at known angles from the image's."""
    image = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), dim=0)
    texts = torch.tensor(
        [[math.cos(math.radians(d)), math.sin(math.radians(d)), 0.0] for d in degrees], dtype=torch.float64
    )
    return (texts @ image).tolist()


def test_top_k_keeps_the_closest_best_first():
    captions = ["far", "closest", "middle", "opposite", "near"]
    scores = _cosines_at_angles([80, 5, 45, 180, 20])
    kept, kept_scores = top_k_by_score(captions, scores, 3)
    assert kept == ["closest", "near", "middle"]
    assert kept_scores == [scores[1], scores[4], scores[2]]


def test_top_k_larger_than_candidates_keeps_all_sorted():
    kept, kept_scores = top_k_by_score(["b", "a"], [0.1, 0.9], 5)
    assert (kept, kept_scores) == (["a", "b"], [0.9, 0.1])


def test_top_k_ties_keep_candidate_order():
    assert top_k_by_score(["x", "y", "z"], [0.5, 0.7, 0.5], 3)[0] == ["y", "x", "z"]


def test_top_k_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        top_k_by_score(["x"], [0.1, 0.2], 1)


def test_best_index_is_argmax_and_prefers_the_ranker_on_ties():
    assert best_index(_cosines_at_angles([30, 10, 60])) == 1
    assert best_index([0.2, 0.4, 0.4]) == 1
    with pytest.raises(ValueError):
        best_index([])


# --- end to end with the tiny open_clip models ------------------------------------------------------------


def _batch() -> dict[str, list]:
    gradient = Image.linear_gradient("L").convert("RGB").resize((90, 70))
    return {
        "status": [OK, FETCH_ERROR, OK, NO_CAPTION],
        "_image": [gradient, None, Image.new("RGB", (40, 60), "teal"), Image.new("RGB", (8, 8))],
        "_candidates": [
            ["a dog on the grass", "a red car", "a cat on a bed", "two birds in the sky", "a bus",
             "a plate of food", "a man riding a horse"],
            None,
            ["a kite in the sky", "a boat on the water"],
            [],
        ],
    }


def _direct_similarities(spec: str, image: Image.Image, captions: list[str]) -> list[float]:
    """Recompute from scratch with the model's own encoders, independently of ClipScorer."""
    model, preprocess = open_clip.create_model_from_pretrained(spec)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec)
    with torch.no_grad():
        img = model.encode_image(preprocess(image).unsqueeze(0))[0]
        txt = model.encode_text(tokenizer(captions))
    img = img / img.norm()
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (txt @ img).tolist()


@pytest.fixture(scope="module")
def ranked(tiny_models):
    batch = _batch()
    out = make_rank_fn(RankConfig(ranker=tiny_models.ranker, keep_top=5), "cpu")(batch)
    return batch, out


def test_rank_returns_only_new_columns_with_non_ok_rows_none(ranked):
    _, out = ranked
    assert set(out) == {"all_captions", "all_similarities", "candidates", "candidate_similarities"}
    for column in out:
        assert out[column][1] is None and out[column][3] is None
    assert out["candidates"] == out["candidate_similarities"] == [None] * 4  # --keep_all_candidates is off


def test_rank_matches_direct_open_clip_recomputation(ranked, tiny_models):
    batch, out = ranked
    direct = _direct_similarities(tiny_models.ranker, batch["_image"][0], batch["_candidates"][0])
    expected, expected_scores = top_k_by_score(batch["_candidates"][0], direct, 5)
    assert out["all_captions"][0] == expected
    assert out["all_similarities"][0] == pytest.approx(expected_scores, abs=1e-5)
    assert all(type(s) is float for s in out["all_similarities"][0])
    assert out["all_similarities"][0] == sorted(out["all_similarities"][0], reverse=True)


def test_rank_keeps_all_when_fewer_candidates_than_keep_top(ranked):
    batch, out = ranked
    assert sorted(out["all_captions"][2]) == sorted(batch["_candidates"][2])
    assert len(out["all_similarities"][2]) == 2


def test_keep_all_candidates_stores_every_candidate_with_the_similarity_that_ranked_it(ranked, tiny_models):
    """Every candidate in sampling order, scored as open_clip scores it directly; the shortlist is their top
    keep_top, so each kept similarity is its candidate's own; the shortlist itself is unchanged by the flag."""
    batch, without = ranked
    out = make_rank_fn(RankConfig(ranker=tiny_models.ranker, keep_top=3, keep_all_candidates=True), "cpu")(batch)
    for i in (0, 2):  # the ok rows
        candidates, similarities = out["candidates"][i], out["candidate_similarities"][i]
        assert candidates == batch["_candidates"][i]
        direct = _direct_similarities(tiny_models.ranker, batch["_image"][i], candidates)
        assert similarities == pytest.approx(direct, abs=1e-5) and all(type(s) is float for s in similarities)
        best_first = sorted(range(len(candidates)), key=lambda j: similarities[j], reverse=True)[:3]
        assert out["all_captions"][i] == [candidates[j] for j in best_first]
        assert out["all_similarities"][i] == [similarities[j] for j in best_first]  # the same floats, not recomputed
        assert out["all_captions"][i] == without["all_captions"][i][:3]
    assert len(out["candidates"][0]) == 7 > 3  # more candidates than kept: the two lists differ
    assert out["candidates"][1] is None and out["candidate_similarities"][3] is None  # rows not ok


def test_the_laion_idle_cap_ranker_is_a_known_open_clip_model():
    """The preset's ranker, CLIP ViT-L/14@336px, resolves in open_clip to OpenAI's weights with QuickGELU, as
    clip.load("ViT-L/14@336px") ran it (checked from open_clip's registry; nothing is downloaded)."""
    from builder.config import parse_config

    spec = parse_config(["--output_dir", "unused", "--preset", "laion-idle-cap"]).rank.ranker
    name, pretrained = parse_clip_spec(spec)
    assert open_clip.get_pretrained_cfg(name, pretrained)["url"].endswith("/ViT-L-14-336px.pt")
    assert needs_quick_gelu(name, pretrained)
    assert open_clip.get_model_config(name)["vision_cfg"]["image_size"] == 336


def test_rank_refuses_ok_rows_without_candidates(tiny_models):
    rank = make_rank_fn(RankConfig(ranker=tiny_models.ranker), "cpu")
    with pytest.raises(ValueError, match="no_caption"):
        rank({"status": [OK], "_image": [Image.new("RGB", (8, 8))], "_candidates": [[]]})


def test_rank_batch_without_ok_rows(tiny_models):
    rank = make_rank_fn(RankConfig(ranker=tiny_models.ranker), "cpu")
    out = rank({"status": [FETCH_ERROR], "_image": [None], "_candidates": [None]})
    assert out == {"all_captions": [None], "all_similarities": [None], "candidates": [None],
                   "candidate_similarities": [None]}


def test_rerank_scores_in_all_captions_order_and_picks_the_argmax(ranked, tiny_models):
    batch, ranked_out = ranked
    batch = {**batch, **ranked_out}
    out = make_rerank_fn(RerankConfig(reranker=tiny_models.reranker), "cpu")(batch)
    assert set(out) == {"rerank_similarities", "top_caption_raw"}
    for i in (0, 2):
        direct = _direct_similarities(tiny_models.reranker, batch["_image"][i], batch["all_captions"][i])
        assert out["rerank_similarities"][i] == pytest.approx(direct, abs=1e-5)
        best = max(range(len(direct)), key=direct.__getitem__)
        assert out["top_caption_raw"][i] == batch["all_captions"][i][best]
    assert out["rerank_similarities"][1] is None and out["top_caption_raw"][1] is None
    assert out["rerank_similarities"][3] is None and out["top_caption_raw"][3] is None


def test_rerank_none_keeps_the_ranker_best_without_loading_a_model(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("reranker 'none' must not load a model")

    monkeypatch.setattr(rerank_module, "shared_scorer", no_model)
    rerank = make_rerank_fn(RerankConfig(reranker="none"), "cpu", precision="bf16", model_batch_size=4)
    out = rerank({"status": [OK, FETCH_ERROR], "_image": [None, None], "all_captions": [["best", "second"], None]})
    assert out == {"rerank_similarities": [None, None], "top_caption_raw": ["best", None]}


def _recording_scorers(monkeypatch) -> list[ClipScorer]:
    """The scorers the rank and rerank factories load, as they load them."""
    made = []

    def scorer(*args, **kwargs):
        made.append(ClipScorer(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(rank_module, "shared_scorer", scorer)
    monkeypatch.setattr(rerank_module, "shared_scorer", scorer)
    return made


def test_factories_load_the_scorer_in_the_resolved_precision_and_batch_size(tiny_models, monkeypatch):
    made = _recording_scorers(monkeypatch)
    make_rank_fn(RankConfig(ranker=tiny_models.ranker), "cpu", precision="bf16", model_batch_size=3)
    make_rerank_fn(RerankConfig(reranker=tiny_models.reranker), "cpu", precision="auto")
    assert [(s.dtype, s.batcher.fixed_size) for s in made] == [(torch.bfloat16, 3), (torch.float32, 0)]
    with pytest.raises(ValueError, match="--precision"):
        make_rank_fn(RankConfig(ranker=tiny_models.ranker), "cpu", precision="half")


def test_rank_and_rerank_one_image_per_forward_give_the_same_results(ranked, tiny_models, monkeypatch):
    batch, whole = ranked
    made = _recording_scorers(monkeypatch)
    one = make_rank_fn(RankConfig(ranker=tiny_models.ranker, keep_top=5), "cpu", model_batch_size=1)(batch)
    rerank = RerankConfig(reranker=tiny_models.reranker)
    reranked = {size: make_rerank_fn(rerank, "cpu", model_batch_size=size)({**batch, **whole}) for size in (0, 1)}
    assert [s.batcher.fixed_size for s in made] == [1, 0, 1]
    assert one["all_captions"] == whole["all_captions"]
    assert reranked[1]["top_caption_raw"] == reranked[0]["top_caption_raw"]
    for i in (0, 2):  # the ok rows
        assert one["all_similarities"][i] == pytest.approx(whole["all_similarities"][i], abs=1e-6)
        assert reranked[1]["rerank_similarities"][i] == pytest.approx(reranked[0]["rerank_similarities"][i], abs=1e-6)


def test_scorer_keeps_row_boundaries_and_handles_empty_rows(tiny_models):
    scorer = ClipScorer(tiny_models.ranker, "cpu")
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    sims = scorer.similarities(images, [["a", "b", "c"], []])
    assert [len(s) for s in sims] == [3, 0]
    assert scorer.similarities(images, [[], []]) == [[], []]
    assert scorer.similarities([], []) == []
    with pytest.raises(ValueError):
        scorer.similarities(images, [["a"]])


def test_scorer_refuses_a_model_without_weights(tiny_models, tmp_path):
    source = Path(tiny_models.ranker.removeprefix("local-dir:"))
    shutil.copy(source / "open_clip_config.json", tmp_path / "open_clip_config.json")
    with pytest.raises(RuntimeError, match="pretrained weights"):
        ClipScorer(f"local-dir:{tmp_path}", "cpu")

"""Model revisions come from the local Hugging Face cache, or say they were not recorded."""

import pytest
from huggingface_hub import constants

from dataset_card.provenance import NOT_RECORDED, models_used

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding one snapshot of a captioner and of open_clip's mirror of ViT-L-14/openai."""
    for repo, filename in (("Salesforce/blip-image-captioning-large", "config.json"),
                           ("timm/vit_large_patch14_clip_224.openai", "open_clip_config.json")):
        folder = tmp_path / ("models--" + repo.replace("/", "--"))
        (folder / "snapshots" / SHA).mkdir(parents=True)
        (folder / "snapshots" / SHA / filename).write_text("{}")
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(SHA)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def config(captioner, ranker, reranker, repairer):
    return {"caption": {"captioner": captioner}, "rank": {"ranker": ranker}, "rerank": {"reranker": reranker},
            "repair": {"repairer": repairer}}


def test_cached_hub_models_name_their_snapshot(hub_cache, tmp_path):
    used = models_used(config("Salesforce/blip-image-captioning-large", "ViT-L-14/openai", "none",
                              "vennify/t5-base-grammar-correction"))
    assert [(m.role, m.hub_id, m.revision) for m in used] == [
        ("captioner", "Salesforce/blip-image-captioning-large", SHA),
        ("first ranker", "timm/vit_large_patch14_clip_224.openai", SHA),  # open_clip's Hub mirror of the tag
        ("second ranker", None, NOT_RECORDED),  # turned off
        ("repairer", "vennify/t5-base-grammar-correction", NOT_RECORDED),  # not in this cache
    ]


def test_local_models_have_no_revision(hub_cache, tmp_path):
    used = models_used(config(str(tmp_path), f"local-dir:{tmp_path}", "hf-hub:org/not-cached", str(tmp_path)))
    assert [(m.hub_id, m.revision) for m in used] == [(None, NOT_RECORDED), (None, NOT_RECORDED),
                                                      ("org/not-cached", NOT_RECORDED), (None, NOT_RECORDED)]

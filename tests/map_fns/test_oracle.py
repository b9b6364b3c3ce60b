"""The product against an independent transcription of LAION's reference code (tests/oracle).

The captioner is `build_peaked_captioner`'s tiny BLIP, whose logits are peaked, so that on the sample
photographs with the recipe's settings every sampling rule decides something: the early stop fires (at
step 0 for whole images, before min length for others), min length blocks an EOS the nucleus would keep,
candidates repeat and reach their max length. The rankers are the `tiny` preset's CLIPs. Both sides draw
from the same per-row uniforms; everything else the oracle computes its own way (no cache, one candidate
set at a time, each caption scored alone). The product's settings are its own defaults, the oracle's those
of the reference code, so a changed default counts as a departure too.
"""

import io
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from builder.source import bundled_sample
from builder.tiny_models import build_peaked_captioner
from map_fns.captioners import BLIP, prompt_for
from map_fns.blip_decode import load_captioner, prompt_token_ids, sample_candidate_ids
from map_fns.caption import CaptionConfig, make_caption_fn
from map_fns.rank import RankConfig, make_rank_fn
from map_fns.precision import set_tf32
from map_fns.rerank import RerankConfig, make_rerank_fn
from map_fns.sampling import row_uniforms
from map_fns.status import NO_CAPTION, OK
from tests.devices import DEVICES
from tests.oracle import sampling as oracle
from tests.oracle.ranking import ReferenceClip, choose

SEED = 0


@pytest.fixture(scope="module")
def photos() -> tuple[list[str], list[Image.Image]]:
    """The bundled sample photographs (row keys are their URLs), decoded plainly, as both sides get them."""
    rows = pq.read_table(bundled_sample(), columns=["URL", "image"]).to_pylist()
    return [row["URL"] for row in rows], [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]


@pytest.fixture(scope="module")
def peaked(tmp_path_factory) -> str:
    return build_peaked_captioner(tmp_path_factory.mktemp("peaked") / "captioner")


def _oracle_samples(captioner: str, photos, recipe: oracle.Recipe) -> list[oracle.Sampled]:
    model = BlipForConditionalGeneration.from_pretrained(captioner).eval()
    processor = BlipProcessor.from_pretrained(captioner)
    pixels = [processor.image_processor([image], return_tensors="pt").pixel_values for image in photos[1]]
    return [oracle.sample_image(model, processor.tokenizer, image_pixels, oracle.reference_uniforms(SEED, key, recipe),
                                recipe)
            for key, image_pixels in zip(photos[0], pixels)]


def _product_token_ids(cfg: CaptionConfig, photos, device: str = "cpu") -> list[list[list[int]]]:
    """The caption stage's decode loop on every photograph at once: token ids per image and candidate."""
    keys, images = photos
    model, processor = load_captioner(cfg.captioner, torch.device(device))
    text = model.config.text_config
    prompt = prompt_token_ids(processor.tokenizer, prompt_for(BLIP, cfg.caption_prompt), text.bos_token_id,
                              text.sep_token_id)
    pixels = processor.image_processor(images, return_tensors="pt").pixel_values.to(device)
    uniforms = torch.stack([row_uniforms(cfg.seed, key, cfg.num_candidates, max(cfg.max_lengths)) for key in keys])
    return sample_candidate_ids(model, pixels, uniforms, cfg, prompt)


@pytest.fixture(scope="module")
def reference(peaked, photos) -> list[oracle.Sampled]:
    return _oracle_samples(peaked, photos, oracle.Recipe())


@pytest.fixture(scope="module")
def product(peaked, photos, tiny_models) -> dict[str, list]:
    """The caption, rank and rerank stages, built by their factories and run one after another on one batch."""
    keys, images = photos
    batch = {"_image": images, "_row_key": keys, "status": [OK] * len(keys), "error": [None] * len(keys)}
    for fn in (make_caption_fn(CaptionConfig(captioner=peaked, seed=SEED), "cpu"),
               make_rank_fn(RankConfig(ranker=tiny_models.ranker), "cpu"),
               make_rerank_fn(RerankConfig(reranker=tiny_models.reranker), "cpu")):
        batch |= fn(batch)
    return batch


def _nonempty(captions: list[str]) -> list[str]:
    """The reference's captions as we store them (documented departures): whitespace trimmed (its cut could leave
    a leading space), then empty ones dropped (it kept one) and repeats made by the trimming dropped."""
    return list(dict.fromkeys(caption.strip() for caption in captions if caption.strip()))


def test_the_peaked_captioner_meets_every_rule_of_the_loop(reference):
    """What the comparisons below rest on: each rule decided something, on more than one image."""
    events = sum((sampled.events for sampled in reference), start=Counter())
    for event in (oracle.FORCED_STOP, oracle.FORCED_STOP_BEFORE_MIN_LENGTH, oracle.EOS_BLOCKED_IN_NUCLEUS,
                  oracle.SAMPLED_EOS, oracle.DUPLICATE, oracle.EMPTY, oracle.MAX_LENGTH):
        assert events[event] > 0, (event, events)
    unique = [len(_nonempty(sampled.captions)) for sampled in reference]
    assert 0 < unique.count(0) < len(unique) // 2, unique  # some images, not most, lose every candidate
    assert sum(count > 5 for count in unique) >= 3, unique  # the shortlist really cuts


@pytest.mark.parametrize("device", DEVICES)
def test_product_samples_the_reference_loops_tokens(peaked, photos, reference, device):
    """Candidate by candidate, the same generated tokens (the rules: penalty, top-k, top-p, EOS blocking, the
    early stop, lengths). On a GPU in strict fp32 (`--precision fp32`: no TF32) against the oracle on the CPU."""
    set_tf32("fp32")
    product = _product_token_ids(CaptionConfig(captioner=peaked, seed=SEED), photos, device)
    for key, ours, expected in zip(photos[0], product, reference):
        assert ours == expected.generated, key


def test_product_samples_the_reference_loops_tokens_off_the_recipe(peaked, photos):
    """Settings where the order of the rules shows: top-k 3 within the vocabulary, so cutting to k before or
    after the nucleus keeps different tokens; a weaker penalty and a shorter min length."""
    settings = dict(top_k=3, top_p=0.6, min_length=2, repetition_penalty=1.1)
    few = (photos[0][:4], photos[1][:4])
    product = _product_token_ids(CaptionConfig(captioner=peaked, seed=SEED, **settings), few)
    reference = _oracle_samples(peaked, few, oracle.Recipe(**settings))
    for key, ours, expected in zip(few[0], product, reference):
        assert ours == expected.generated, key


def test_product_captions_are_the_reference_loops(product, reference):
    """Same unique non-empty captions per image (the reference lists them in completion order, we in sampling
    order); an image whose every candidate is empty is `no_caption`."""
    for key, status, candidates, expected in zip(product["_row_key"], product["status"], product["_candidates"],
                                                 reference):
        expected = _nonempty(expected.captions)
        assert status == (OK if expected else NO_CAPTION), key
        assert sorted(candidates or []) == sorted(expected), key
        assert len(set(candidates or [])) == len(candidates or []), key


def test_product_ranks_and_chooses_as_the_reference(product, photos, tiny_models):
    """Given the product's candidates, the reference's two-stage ranking keeps the same shortlist, with the same
    similarities, and chooses the same caption."""
    first, second = ReferenceClip(tiny_models.ranker), ReferenceClip(tiny_models.reranker)
    ranked = [i for i, status in enumerate(product["status"]) if status == OK]
    assert len(ranked) >= len(product["status"]) // 2
    for i in ranked:
        expected = choose(first, second, photos[1][i], product["_candidates"][i])
        assert product["all_captions"][i] == expected.shortlist, photos[0][i]
        np.testing.assert_allclose(product["all_similarities"][i], expected.similarities, rtol=0, atol=1e-6)
        np.testing.assert_allclose(product["rerank_similarities"][i], expected.rerank_similarities, rtol=0, atol=1e-6)
        assert product["top_caption_raw"][i] == expected.chosen, photos[0][i]


@pytest.mark.parametrize("device", DEVICES)
def test_a_rows_candidates_do_not_depend_on_its_batch(peaked, photos, device):
    """On the peaked captioner, whose candidates follow the image: a photograph sampled alone, and in a reversed
    batch of all of them, gets the same candidates, at the default precision of the device (on a GPU: TF32
    matmuls, whose kernels may differ by batch shape)."""
    keys, images = photos
    caption = make_caption_fn(CaptionConfig(captioner=peaked, seed=SEED), device)

    def candidates(indices: list[int]) -> list:
        batch = {"_image": [images[i] for i in indices], "_row_key": [keys[i] for i in indices],
                 "status": [OK] * len(indices), "error": [None] * len(indices)}
        return caption(batch)["_candidates"]

    together = candidates(list(range(len(keys)))[::-1])[::-1]
    assert [candidates([i])[0] for i in range(0, len(keys), 5)] == together[::5]
    assert len(set(map(tuple, together))) > len(keys) // 2  # the images really steer the candidates

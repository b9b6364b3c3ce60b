"""Speed never changes results: the batched half-precision-ready stages against LAION's plain loop.

The reference loop (`bench.reference_loop`) runs one image at a time through transformers' own decoder
and scores every caption alone at 77 tokens; the fast stages batch images, share cross-attention states,
trim CLIP text and size batches to memory. On CPU in fp32 with the tiny models both must give the same
candidates, shortlist and chosen caption for the same seed.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import map_fns.batching
import map_fns.blip_decode
from map_fns.captioners import BLIP, prompt_for
from map_fns.blip_decode import bytes_per_image, load_captioner, prompt_token_ids, sample_candidate_ids
from map_fns.caption import CaptionConfig, make_caption_fn
from map_fns.candidate_decoder import CandidateDecoder
from map_fns.rank import RankConfig
from map_fns.registry import STAGES
from bench.reference_loop import ReferenceLoop
from map_fns.repair import RepairConfig
from map_fns.rerank import RerankConfig
from map_fns.sampling import row_uniforms
from map_fns.stage import StageContext
from map_fns.status import OK

KEYS = [f"https://example.com/{i}.jpg" for i in range(5)]


def _images(n=len(KEYS)):
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (40 + 13 * i, 90 - 9 * i, 3), dtype=np.uint8)) for i in range(n)]


def _configs(tiny_models, **caption) -> dict:
    """Every model stage's config by stage name (also the reference loop's argument names)."""
    return {"caption": CaptionConfig(captioner=tiny_models.captioner, **caption),
            "rank": RankConfig(ranker=tiny_models.ranker), "rerank": RerankConfig(reranker=tiny_models.reranker),
            "repair": RepairConfig(repairer=tiny_models.repairer)}


def _fast(configs, images, keys, **engine):
    """The registered model stages, loaded and run as the builder does, one after another on one batch."""
    batch = {"_image": images, "_row_key": keys, "status": [OK] * len(images), "error": [None] * len(images)}
    context = StageContext("cpu", **engine)
    for stage in (stage for stage in STAGES if stage.model):
        batch.update(stage.load(configs[stage.name], context)(batch))
    return batch


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_stages_give_the_reference_loops_candidates_and_choice(tiny_models, seed):
    configs = _configs(tiny_models, seed=seed)
    images = _images()
    fast = _fast(configs, images, KEYS)
    reference = ReferenceLoop(**configs)
    for i, (image, key) in enumerate(zip(images, KEYS)):
        expected = reference.run(image, key)
        assert fast["_candidates"][i] == expected["candidates"]
        assert fast["all_captions"][i] == expected["all_captions"]
        assert fast["top_caption_raw"][i] == expected["top_caption_raw"]
        assert fast["top_caption"][i] == expected["top_caption"]
        np.testing.assert_allclose(fast["all_similarities"][i], expected["all_similarities"], atol=1e-6)
        np.testing.assert_allclose(fast["rerank_similarities"][i], expected["rerank_similarities"], atol=1e-6)
    assert len({len(c) for c in fast["_candidates"]}) > 1 or len(fast["_candidates"][0]) > 1  # real samples


@pytest.fixture(scope="module")
def blip(tiny_models):
    return load_captioner(tiny_models.captioner, torch.device("cpu"))


def _sample(blip, cfg, images, keys, **kwargs):
    model, processor = blip
    text = model.config.text_config
    prompt = prompt_token_ids(processor.tokenizer, prompt_for(BLIP, cfg.caption_prompt), text.bos_token_id,
                              text.sep_token_id)
    pixels = processor.image_processor(images, return_tensors="pt").pixel_values
    uniforms = torch.stack([row_uniforms(cfg.seed, key, cfg.num_candidates, max(cfg.max_lengths)) for key in keys])
    return sample_candidate_ids(model, pixels, uniforms, cfg, prompt, **kwargs)


def test_candidates_do_not_depend_on_how_often_finished_ones_are_dropped(blip, tiny_models):
    cfg = CaptionConfig(captioner=tiny_models.captioner, eos_stop_probability=0.02)  # ends spread over steps
    every_step = _sample(blip, cfg, _images(), KEYS, compact_every=1)
    lengths = {len(ids) for image in every_step for ids in image}
    assert len(lengths) > 3  # candidates really finish at different steps
    for compact_every in (3, 1000):
        assert _sample(blip, cfg, _images(), KEYS, compact_every=compact_every) == every_step


def test_cross_attention_states_are_kept_once_per_image_not_per_candidate(blip):
    model, _ = blip
    embeds = model.vision_model(pixel_values=torch.zeros(3, 3, 64, 64))[0]
    decoder = CandidateDecoder(model.text_decoder, embeds, num_candidates=40, max_positions=50)
    keys, values = decoder.cross[0]
    assert keys.shape[0] == values.shape[0] == 3
    decoder.prefill(torch.tensor([model.config.text_config.bos_token_id]))
    assert decoder.keys[0].shape[0] == 120  # self-attention caches are per candidate
    decoder.compact(torch.arange(40, 120))  # every candidate of image 0 finished
    assert decoder.cross[0][0].shape[0] == 2 and decoder.owner.unique().tolist() == [0, 1]


def _recording_sampler(monkeypatch, fail_above=None):
    """Wrap the real sampler: record images per call; raise out-of-memory above `fail_above` images."""
    sizes, real = [], map_fns.blip_decode.sample_candidate_ids

    def sample(model, pixel_values, *args, **kwargs):
        sizes.append(len(pixel_values))
        if fail_above is not None and len(pixel_values) > fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, pixel_values, *args, **kwargs)

    monkeypatch.setattr(map_fns.blip_decode, "sample_candidate_ids", sample)
    return sizes


def _caption(tiny_models, **engine):
    cfg = CaptionConfig(captioner=tiny_models.captioner)
    images = _images()
    batch = {"_image": images, "_row_key": KEYS, "status": [OK] * len(images), "error": [None] * len(images)}
    return make_caption_fn(cfg, "cpu", **engine)(batch)["_candidates"]


def test_caption_stage_halves_and_retries_a_batch_that_runs_out_of_memory(tiny_models, monkeypatch):
    whole = _caption(tiny_models)
    sizes = _recording_sampler(monkeypatch, fail_above=2)
    assert _caption(tiny_models) == whole
    assert sizes == [5, 2, 2, 1]  # 5 fails; halves to 2, remembered


def test_caption_stage_sizes_batches_to_free_memory(tiny_models, blip, monkeypatch):
    whole = _caption(tiny_models)
    model, _ = blip
    cfg = CaptionConfig()
    two_images = bytes_per_image(model, cfg.num_candidates, 5 + max(cfg.max_lengths)) * 2.5 / map_fns.batching.MEMORY_HEADROOM
    monkeypatch.setattr(map_fns.batching, "free_device_memory", lambda device: int(two_images))
    sizes = _recording_sampler(monkeypatch)
    assert _caption(tiny_models) == whole
    assert sizes == [2, 2, 1]


def test_a_fixed_model_batch_size_gives_the_same_candidates(tiny_models, monkeypatch):
    whole = _caption(tiny_models)
    sizes = _recording_sampler(monkeypatch)
    assert _caption(tiny_models, model_batch_size=1) == whole
    assert sizes == [1] * len(KEYS)


def test_half_precision_reaches_the_captioner(tiny_models, monkeypatch):
    dtypes = []
    real = map_fns.blip_decode.sample_candidate_ids

    def sample(model, pixel_values, *args, **kwargs):
        dtypes.append((model.dtype, pixel_values.dtype))
        return real(model, pixel_values, *args, **kwargs)

    monkeypatch.setattr(map_fns.blip_decode, "sample_candidate_ids", sample)
    candidates = _caption(tiny_models, precision="bf16")
    assert dtypes == [(torch.bfloat16, torch.bfloat16)]
    assert all(candidates)

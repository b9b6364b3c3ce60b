"""The caption stage on a tiny BLIP (same classes as the real one, random weights, loaded from disk)."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from map_fns.captioners import BLIP, prompt_for
from map_fns import sampling
from map_fns.blip_decode import load_captioner, prompt_token_ids, sample_candidate_ids, unique_captions
from map_fns.caption import CaptionConfig, make_caption_fn
from map_fns.status import FETCH_ERROR, NO_CAPTION, OK


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


def _batch(images, keys, statuses=None):
    return {"_image": images, "_row_key": keys, "status": statuses or [OK] * len(images),
            "error": [None] * len(images)}


@pytest.fixture(scope="module")
def blip(tiny_models):
    model, processor = load_captioner(tiny_models.captioner, torch.device("cpu"))
    return model, processor


@pytest.fixture(scope="module")
def caption_fn(tiny_models):
    return make_caption_fn(CaptionConfig(captioner=tiny_models.captioner), "cpu")


def _sample(blip, cfg, n_images=2, seed=0):
    model, processor = blip
    text = model.config.text_config
    prompt = prompt_token_ids(processor.tokenizer, prompt_for(BLIP, cfg.caption_prompt), text.bos_token_id,
                              text.sep_token_id)
    pixels = processor.image_processor(_images(n_images, seed), return_tensors="pt").pixel_values
    uniforms = torch.stack([sampling.row_uniforms(cfg.seed, f"row{i}", cfg.num_candidates, max(cfg.max_lengths))
                            for i in range(n_images)])
    return sample_candidate_ids(model, pixels, uniforms, cfg, prompt), prompt


def test_prompt_becomes_dec_then_prompt_words_without_sep(blip):
    model, processor = blip
    text, tok = model.config.text_config, processor.tokenizer
    ids = prompt_token_ids(tok, "a picture of ", text.bos_token_id, text.sep_token_id)
    assert ids[0] == text.bos_token_id and text.sep_token_id not in ids
    assert tok.decode(ids[1:]) == "a picture of"


def test_same_seed_same_candidates_other_seed_other_candidates(tiny_models, caption_fn):
    images = _images(2)
    first = caption_fn(_batch(images, ["a", "b"]))["_candidates"]
    assert first == caption_fn(_batch(images, ["a", "b"]))["_candidates"]
    other = make_caption_fn(CaptionConfig(captioner=tiny_models.captioner, seed=1), "cpu")
    assert other(_batch(images, ["a", "b"]))["_candidates"] != first


def test_a_rows_candidates_do_not_depend_on_its_batch(caption_fn):
    images, keys = _images(3), ["k0", "k1", "k2"]
    together = caption_fn(_batch(images, keys))["_candidates"]
    alone = [caption_fn(_batch([img], [key]))["_candidates"][0] for img, key in zip(images, keys)]
    reversed_batch = caption_fn(_batch(images[::-1], keys[::-1]))["_candidates"][::-1]
    assert together == alone == reversed_batch
    assert all(len(c) > 1 for c in together)


def test_max_length_schedule_counts_generated_tokens(blip, tiny_models):
    """EOS blocked throughout and no early stop: every candidate runs to exactly its scheduled length."""
    cfg = CaptionConfig(captioner=tiny_models.captioner, min_length=100, eos_stop_probability=1.0)
    ids, _ = _sample(blip, cfg)
    for image_ids in ids:
        assert [len(c) for c in image_ids] == [20] * 8 + [30] * 16 + [45] * 16


def _eos_favoured(blip):
    """The tiny model with its LM-head bias pushed so EOS is almost certain at every step."""
    model, processor = blip
    biased = type(model).from_pretrained(model.name_or_path).eval()
    biased.text_decoder.cls.predictions.bias.data[model.config.text_config.sep_token_id] = 30.0
    return biased, processor


def test_min_length_blocks_sampled_eos_until_reached(blip, tiny_models):
    cfg = CaptionConfig(captioner=tiny_models.captioner, min_length=3, eos_stop_probability=1.0)
    ids, _ = _sample(_eos_favoured(blip), cfg)
    assert {len(c) for image_ids in ids for c in image_ids} == {3}


def test_early_stop_ends_candidates_when_p_eos_exceeds_threshold(blip, tiny_models):
    cfg = CaptionConfig(captioner=tiny_models.captioner, min_length=3)  # default threshold 0.179
    ids, _ = _sample(_eos_favoured(blip), cfg)
    assert {len(c) for image_ids in ids for c in image_ids} == {0}


def test_all_empty_candidates_make_status_no_caption(tiny_models):
    fn = make_caption_fn(CaptionConfig(captioner=tiny_models.captioner, eos_stop_probability=1e-12), "cpu")
    out = fn(_batch(_images(1), ["x"]))
    assert out["status"] == [NO_CAPTION] and out["_candidates"] == [[]] and out["error"][0]


def test_greedy_settings_reproduce_transformers_generate_token_for_token(blip, tiny_models):
    """top_k=1, no penalty, no early stop, no min length: our cached loop must equal `generate`."""
    cfg = CaptionConfig(captioner=tiny_models.captioner, num_candidates=1, length_schedule="1:20", top_k=1,
                        repetition_penalty=1.0, eos_stop_probability=1.0, min_length=0)
    ids, prompt = _sample(blip, cfg, n_images=3)
    model, processor = blip
    pixels = processor.image_processor(_images(3), return_tensors="pt").pixel_values
    input_ids = processor.tokenizer(["a picture of "] * 3, return_tensors="pt").input_ids
    reference = model.generate(pixel_values=pixels, input_ids=input_ids, do_sample=False, max_new_tokens=20)
    sep = model.config.text_config.sep_token_id
    for ours, theirs in zip(ids, reference[:, len(prompt):].tolist()):
        expected = theirs[: theirs.index(sep)] if sep in theirs else theirs
        assert ours[0] == expected


def test_unique_captions_drops_duplicates_and_empties_keeping_order(blip):
    model, processor = blip
    tok, text = processor.tokenizer, model.config.text_config
    prompt = "a picture of "
    prompt_ids = prompt_token_ids(tok, prompt, text.bos_token_id, text.sep_token_id)
    a, b = tok("a dog").input_ids[1:-1], tok("a cat").input_ids[1:-1]
    assert unique_captions(tok, [a, [], b, a, b], prompt_ids, prompt) == ["a dog", "a cat"]


def test_a_first_word_piece_is_cut_as_the_reference_cut_it(blip):
    """The reference decoded prompt and candidate together and cut the prompt's length in characters: a first
    piece continuing "of" ("of" + "##xyz" -> "ofxyz") loses its first character (the prompt's trailing space)."""
    model, processor = blip
    tok, text = processor.tokenizer, model.config.text_config
    prompt = "a picture of "
    prompt_ids = prompt_token_ids(tok, prompt, text.bos_token_id, text.sep_token_id)
    piece = next(token for token in sorted(tok.get_vocab()) if token.startswith("##") and len(token) >= 5)
    dog = tok("dog").input_ids[1:-1]
    assert unique_captions(tok, [tok.convert_tokens_to_ids([piece]) + dog], prompt_ids, prompt) == [
        f"{piece[3:]} dog"]


def test_rows_not_ok_pass_through_untouched(caption_fn):
    batch = _batch([None, _images(1)[0]], ["bad", "good"], [FETCH_ERROR, OK])
    batch["error"] = ["HTTP 404", None]
    out = caption_fn(batch)
    assert out["status"] == [FETCH_ERROR, OK] and out["error"] == ["HTTP 404", None]
    assert out["_candidates"][0] is None and out["_candidates"][1]


def test_bad_recipe_values_are_refused_in_one_line():
    for field, value in [("num_candidates", 0), ("top_p", 1.5), ("top_k", 0), ("repetition_penalty", 0.0)]:
        with pytest.raises(ValueError, match=f"--{field}") as err:
            dataclasses.replace(CaptionConfig(), **{field: value})
        assert "\n" not in str(err.value)


def test_refuses_a_captioner_checkpoint_with_missing_weights(tiny_models, tmp_path):
    broken = tmp_path / "blip"
    shutil.copytree(tiny_models.captioner, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(name for name in weights if name.startswith("text_decoder.") and name.endswith("query.weight"))
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="randomly initialised") as err:
        make_caption_fn(CaptionConfig(captioner=str(broken)), "cpu")
    assert dropped in str(err.value) and "captioner" in str(err.value)

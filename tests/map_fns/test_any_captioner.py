"""Captioners other than BLIP: the recipe's rules through `generate`, per-row seeding, and the model's own settings.

Tiny random BLIP-2, GIT and Qwen2-VL models (`builder.tiny_captioners`), peaked so that the rules decide
things, load through the product's loader. The oracle (`tests/oracle/sampling.sample_sequences`) samples each
image's candidates with its own rule code, re-running every whole sequence through the model's plain forward
(no cache, no `generate`); it shares with the product only the per-row uniforms and the model inputs
(`GenericSampler.inputs`: the processor, the prompt, the chat template).
"""

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from builder.source import bundled_sample
from builder.tiny_captioners import TINY_FAMILIES, build_tiny_captioner
from map_fns.caption import CaptionConfig, make_caption_fn
from map_fns.captioners import family_of
from map_fns.batching import MEMORY_HEADROOM
from map_fns.generate_decode import GenericSampler, RecipeSampler
from map_fns.sampling import row_uniforms
from map_fns.status import NO_CAPTION, OK
from tests.oracle import sampling as oracle

SEED = 0
# What the rules decide on each peaked family's photographs (on GIT and Qwen2-VL, EOS is in the nucleus only as
# the top token, above the early-stop threshold; BLIP-2 has min length block it)
EVENTS = {
    "blip-2": (oracle.FORCED_STOP, oracle.FORCED_STOP_BEFORE_MIN_LENGTH, oracle.EOS_BLOCKED_IN_NUCLEUS, oracle.EMPTY,
               oracle.MAX_LENGTH),
    "git": (oracle.FORCED_STOP, oracle.FORCED_STOP_BEFORE_MIN_LENGTH, oracle.MAX_LENGTH),
    "qwen2_vl": (oracle.FORCED_STOP, oracle.FORCED_STOP_BEFORE_MIN_LENGTH, oracle.EMPTY, oracle.MAX_LENGTH),
}
SHORT = "4:10,4:16"  # max lengths for tests of everything but length: the oracle re-runs every step whole
PER_TOKEN = ("attention_mask", "token_type_ids", "mm_token_type_ids")  # model inputs with one entry per input token
# Bundled sample photographs: square, landscape (two of nearly the same shape), portrait and a 102-px one, so
# Qwen2-VL's inputs differ in length between groups and agree within one
PHOTOS = (0, 2, 3, 4, 11, 14)
NUM_PHOTOS = len(PHOTOS)


@pytest.fixture(scope="module")
def photos() -> tuple[list[str], list[Image.Image]]:
    table = pq.read_table(bundled_sample(), columns=["URL", "image"])
    rows = [table.slice(i, 1).to_pylist()[0] for i in PHOTOS]
    return [row["URL"] for row in rows], [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("captioners")


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def peaked(request, model_cache) -> tuple[str, str]:
    """(model_type, folder) of each family's peaked tiny captioner."""
    return request.param, build_tiny_captioner(request.param, model_cache, peaked=True)


def _config(captioner: str, **overrides) -> CaptionConfig:
    """The recipe's settings with 8 candidates (the recipe's three max lengths, 20, 30 and 45, all present)."""
    return CaptionConfig(captioner=captioner, seed=SEED, num_candidates=8, **overrides)


def _sampler(model_type: str, cfg: CaptionConfig) -> GenericSampler:
    return GenericSampler(cfg, family_of(model_type), torch.device("cpu"), torch.float32)


def _oracle_ids(sampler: GenericSampler, key: str, image, events: Counter) -> list[list[int]]:
    """The oracle's generated ids for one image, candidate by candidate."""
    cfg = sampler.cfg
    inputs = sampler.inputs(image)
    prompt = inputs["input_ids"][0].tolist()

    def next_logits(sequences: torch.Tensor) -> torch.Tensor:
        rows, generated = sequences.shape[0], sequences.shape[1] - len(prompt)
        repeated = {key: torch.cat([value] * rows) for key, value in inputs.items() if key != "input_ids"}
        for key in set(PER_TOKEN) & set(repeated):  # generated tokens are text: attended (1), of type 0
            repeated[key] = torch.nn.functional.pad(repeated[key], (0, generated), value=int(key == "attention_mask"))
        return sampler.model(**repeated, input_ids=sequences).logits[:, -1]

    recipe = oracle.Recipe(top_p=cfg.top_p, top_k=cfg.top_k, min_length=cfg.min_length,
                           max_lengths=tuple(cfg.max_lengths), repetition_penalty=cfg.repetition_penalty,
                           force_eos_probability=cfg.eos_stop_probability)
    uniforms = row_uniforms(cfg.seed, key, cfg.num_candidates, max(cfg.max_lengths))
    completed = oracle.sample_sequences(next_logits, prompt, sampler.eos, uniforms, recipe, events)
    return [sequence[len(prompt):] for _, sequence in sorted(completed)]


def test_a_candidate_ends_on_any_of_the_models_end_tokens():
    """A chat model has two end tokens; sampling either ends the candidate, and the first one is what `generate`
    is handed as the end (never recorded)."""
    cfg = CaptionConfig(captioner="unused", num_candidates=2, length_schedule="2:4", min_length=0, top_p=1.0,
                        eos_stop_probability=1.0)  # no early stop: the end token is sampled
    uniforms = torch.full((2, 4), 0.5)
    sampler = RecipeSampler(cfg, uniforms, torch.tensor([4, 4]), eos=[4, 5])
    certain = torch.full((2, 6), -1e4)
    certain[0, 2], certain[1, 5] = 0.0, 0.0  # row 0 samples token 2, row 1 the second end token
    handed = sampler(torch.zeros((2, 3), dtype=torch.long), certain)
    assert handed.argmax(-1).tolist() == [2, 4] and torch.isinf(handed).sum() == 2 * 5
    sampler(torch.zeros((2, 4), dtype=torch.long), certain)
    assert sampler.tokens == [[2, 2], []]


def test_each_family_samples_the_oracles_tokens(peaked, photos):
    model_type, folder = peaked
    sampler = _sampler(model_type, _config(folder, length_schedule=SHORT))
    product = sampler.candidate_ids(photos[1], photos[0])  # all photos in one call
    events = Counter()
    for key, image, ids in zip(*photos, product):
        assert ids == _oracle_ids(sampler, key, image, events), key
    assert all(events[event] > 0 for event in EVENTS[model_type]), events


def test_a_rows_candidates_do_not_depend_on_its_batch(peaked, photos):
    model_type, folder = peaked
    caption = make_caption_fn(_config(folder, length_schedule=SHORT), "cpu")

    def candidates(indices: list[int]) -> list:
        batch = {"_row_key": [photos[0][i] for i in indices], "_image": [photos[1][i] for i in indices],
                 "status": [OK] * len(indices), "error": [None] * len(indices)}
        return caption(batch)["_candidates"]

    together = candidates(list(range(NUM_PHOTOS)))
    assert candidates(list(reversed(range(NUM_PHOTOS)))) == together[::-1]
    assert [candidates([i])[0] for i in range(NUM_PHOTOS)] == together
    assert len({tuple(row) for row in together}) == NUM_PHOTOS  # the images steer the text


def test_the_checkpoints_own_generation_settings_do_not_filter_the_recipes_logits(peaked, photos, tmp_path):
    """Real checkpoints ship sampling settings (Florence-2: 3 beams, no 3-gram repeats; chat models: top-k,
    temperature, repetition penalty); the recipe must see the raw logits whatever they say. (BLIP-2 hands generation
    to its language model, whose settings transformers builds without the file: it must stay unaffected too.)"""
    model_type, folder = peaked
    meddled = shutil.copytree(folder, tmp_path / "meddled")
    config = meddled / "generation_config.json"
    settings = json.loads(config.read_text())
    settings.update(num_beams=3, do_sample=False, top_k=2, top_p=0.5, temperature=0.3, repetition_penalty=3.0,
                    no_repeat_ngram_size=2, min_new_tokens=12, max_new_tokens=4)
    config.write_text(json.dumps(settings))
    cfg = _config(folder)
    expected = _sampler(model_type, cfg).candidate_ids(photos[1][:2], photos[0][:2])
    assert _sampler(model_type, _config(str(meddled))).candidate_ids(photos[1][:2], photos[0][:2]) == expected


def test_sub_batches_sized_to_free_memory_give_the_same_candidates(model_cache, photos, monkeypatch):
    folder = build_tiny_captioner("qwen2_vl", model_cache, peaked=True)
    cfg = _config(folder, length_schedule=SHORT)
    batch = {"_row_key": photos[0], "_image": photos[1], "status": [OK] * NUM_PHOTOS, "error": [None] * NUM_PHOTOS}
    whole = make_caption_fn(cfg, "cpu")(batch)["_candidates"]
    two_images = _sampler("qwen2_vl", cfg).bytes_per_image() * 2.5 / MEMORY_HEADROOM
    monkeypatch.setattr("map_fns.batching.free_device_memory", lambda device: int(two_images))
    sizes, real = [], GenericSampler.__call__
    monkeypatch.setattr(GenericSampler, "__call__", lambda self, images, keys: sizes.append(len(images))
                        or real(self, images, keys))
    assert make_caption_fn(cfg, "cpu")(batch)["_candidates"] == whole
    assert sizes == [2] * (NUM_PHOTOS // 2)


def test_a_chat_models_prompt_runs_once_for_all_its_candidates(model_cache, photos):
    """Qwen2-VL's image is placeholder tokens of its prompt: the prompt (image included) runs through the language
    model once per image and its cache is copied to the candidates, instead of once per candidate."""
    folder = build_tiny_captioner("qwen2_vl", model_cache, peaked=True)
    sampler = _sampler("qwen2_vl", _config(folder, length_schedule=SHORT))
    prompt_tokens = []  # tokens of every language-model call that ran more than one position

    def count_prompt_tokens(module, args, kwargs, out):
        rows, positions = kwargs["inputs_embeds"].shape[:2]
        if positions > 1:
            prompt_tokens.append(rows * positions)

    sampler.model.model.language_model.register_forward_hook(count_prompt_tokens, with_kwargs=True)
    sampler.candidate_ids(photos[1], photos[0])
    lengths = [sampler.inputs(image)["input_ids"].shape[1] for image in photos[1]]
    assert prompt_tokens == [length - 1 for length in lengths]  # the last prompt token starts each candidate


def test_half_precision_reaches_the_model_and_its_inputs(model_cache, photos):
    folder = build_tiny_captioner("qwen2_vl", model_cache, peaked=True)
    sampler = GenericSampler(_config(folder), family_of("qwen2_vl"), torch.device("cpu"), torch.bfloat16)
    assert sampler.model.dtype == torch.bfloat16
    ids = sampler.candidate_ids(photos[1][:2], photos[0][:2])
    assert all(len(candidates) == 8 for candidates in ids) and any(any(c) for c in ids[0])


def test_an_image_the_processor_refuses_fails_alone(model_cache, photos):
    """Qwen2-VL's processor refuses an aspect ratio over 200 (a 5x3000 banner, common in web data): that row gets
    no_caption with the processor's reason, the rows beside it their usual candidates."""
    folder = build_tiny_captioner("qwen2_vl", model_cache, peaked=True)
    caption = make_caption_fn(_config(folder, length_schedule=SHORT), "cpu")
    banner = Image.new("RGB", (3000, 5), "white")
    keys, images = [photos[0][0], "banner", photos[0][1]], [photos[1][0], banner, photos[1][1]]
    out = caption({"_row_key": keys, "_image": images, "status": [OK] * 3, "error": [None] * 3})
    alone = caption({"_row_key": keys[::2], "_image": images[::2], "status": [OK] * 2, "error": [None] * 2})
    assert out["status"][1] == NO_CAPTION and out["_candidates"][1] == []
    assert (out["status"][::2], out["_candidates"][::2]) == (alone["status"], alone["_candidates"])
    assert any(out["_candidates"][::2])
    reason = out["error"][1]
    assert reason.startswith("the captioner's processor refused the image: ") and "aspect ratio" in reason

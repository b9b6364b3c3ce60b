"""The captioner families beyond the three main ones (`MORE_TINY_FAMILIES`): each samples the oracle's tokens
through the product's loader and `generate`, and the caption stage returns candidates with it.

Plain (not peaked) tiny models: their flat distributions exercise the sampling path, not the recipe's rules
(tests/map_fns/test_any_captioner.py holds those on the peaked main families). The oracle comparison is
`_oracle_ids` of that file; an encoder-decoder model (InstructBLIP with Flan-T5, Florence-2) is handed to it through
`_DecoderView`, which makes the decoder's sequences the ones the oracle grows.
"""

import io
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from builder.source import bundled_sample
from builder.tiny_captioners import MORE_TINY_FAMILIES, build_tiny_captioner
from map_fns.caption import CaptionConfig, load_sampler, make_caption_fn
from map_fns.status import OK
from tests.map_fns.test_any_captioner import _oracle_ids

PHOTOS = (0, 3)  # a square and a portrait bundled sample photograph
SCHEDULE = "2:6,2:10"


@pytest.fixture(scope="module")
def photos() -> tuple[list[str], list[Image.Image]]:
    table = pq.read_table(bundled_sample(), columns=["URL", "image"])
    rows = [table.slice(i, 1).to_pylist()[0] for i in PHOTOS]
    return [row["URL"] for row in rows], [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]


@pytest.fixture(scope="module", params=MORE_TINY_FAMILIES)
def captioner(request, tmp_path_factory) -> str:
    return build_tiny_captioner(request.param, tmp_path_factory.mktemp(request.param))


def _config(folder: str) -> CaptionConfig:
    return CaptionConfig(captioner=folder, seed=0, num_candidates=4, length_schedule=SCHEDULE)


class _DecoderView:
    """An encoder-decoder sampler as the oracle sees a decoder-only one: the prompt is the decoder's start token and
    the sequences the oracle grows are the decoder's inputs; the processor's text and its mask go to the encoder."""

    def __init__(self, sampler):
        self.cfg, self.eos, self._sampler = sampler.cfg, sampler.eos, sampler
        self._start = sampler.model.config.get_text_config(decoder=True).decoder_start_token_id

    def inputs(self, image) -> dict[str, torch.Tensor]:
        inputs = self._sampler.inputs(image)
        encoder = {"encoder_input_ids": inputs.pop("input_ids"), "encoder_mask": inputs.pop("attention_mask")}
        return {**inputs, **encoder, "input_ids": torch.tensor([[self._start]])}

    def model(self, input_ids, encoder_input_ids, encoder_mask, **inputs):
        return self._sampler.model(**inputs, input_ids=encoder_input_ids, attention_mask=encoder_mask,
                                   decoder_input_ids=input_ids)


def test_each_family_samples_the_oracles_tokens(captioner, photos):
    keys, images = photos
    sampler = load_sampler(_config(captioner), torch.device("cpu"), torch.float32)
    oracle_view = _DecoderView(sampler) if sampler.model.config.get_text_config().is_encoder_decoder else sampler
    product = sampler.candidate_ids(images, keys)
    for key, image, ids in zip(keys, images, product):
        assert ids == _oracle_ids(oracle_view, key, image, Counter()), key
    assert [len(ids) for ids in product] == [4, 4] and all(map(any, product))


def test_the_caption_stage_returns_candidates(captioner, photos):
    keys, images = photos
    caption = make_caption_fn(_config(captioner), "cpu")
    out = caption({"_row_key": keys, "_image": images, "status": [OK, OK], "error": [None, None]})
    assert out["status"] == [OK, OK] and all(out["_candidates"]), out

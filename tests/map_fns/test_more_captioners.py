"""The captioner families beyond the three main ones (`MORE_TINY_FAMILIES`): each samples the oracle's tokens
through the product's loader and `generate`, and the caption stage returns candidates with it.

Plain (not peaked) tiny models: their flat distributions exercise the sampling path, not the recipe's rules
(tests/map_fns/test_any_captioner.py holds those on the peaked main families). The oracle comparison is
`_oracle_ids` of that file, handed each sampler through `_OracleView`, which says what the oracle assumes of a model
and these families break (encoder-decoder models, PaliGemma's prefix LM).
"""

import io
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
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


class _OracleView:
    """The product's sampler as `_oracle_ids` takes it (a decoder-only model whose whole input is the processor's),
    where a family is otherwise:
    - PaliGemma is a prefix LM whose generated tokens are the suffix, token type 1 (the oracle pads types with 0);
    - an encoder-decoder model (InstructBLIP with Flan-T5, Florence-2): the prompt is the decoder's start token, the
      sequences the oracle grows are the decoder's inputs, the processor's text and its mask the encoder's.
    """

    def __init__(self, sampler):
        self.cfg, self.eos, self._sampler = sampler.cfg, sampler.eos, sampler
        config = sampler.model.config
        self._encoder_decoder = config.get_text_config().is_encoder_decoder
        self._start = getattr(config.get_text_config(decoder=True), "decoder_start_token_id", None)
        self._suffix_type = int(config.model_type == "paligemma")

    def inputs(self, image) -> dict[str, torch.Tensor]:
        inputs = self._sampler.inputs(image)
        if "token_type_ids" in inputs:
            inputs["prompt_token_types"] = inputs.pop("token_type_ids")
        if self._encoder_decoder:
            inputs["encoder_ids"], inputs["encoder_mask"] = inputs.pop("input_ids"), inputs.pop("attention_mask")
            inputs["input_ids"] = torch.tensor([[self._start]])
        return inputs

    def model(self, input_ids, prompt_token_types=None, encoder_ids=None, encoder_mask=None, **inputs):
        if prompt_token_types is not None:
            generated = input_ids.shape[1] - prompt_token_types.shape[1]
            inputs["token_type_ids"] = F.pad(prompt_token_types, (0, generated), value=self._suffix_type)
        if self._encoder_decoder:
            return self._sampler.model(**inputs, input_ids=encoder_ids, attention_mask=encoder_mask,
                                       decoder_input_ids=input_ids)
        return self._sampler.model(**inputs, input_ids=input_ids)


def test_each_family_samples_the_oracles_tokens(captioner, photos):
    keys, images = photos
    sampler = load_sampler(_config(captioner), torch.device("cpu"), torch.float32)
    product = sampler.candidate_ids(images, keys)
    for key, image, ids in zip(keys, images, product):
        assert ids == _oracle_ids(_OracleView(sampler), key, image, Counter()), key
    assert [len(ids) for ids in product] == [4, 4] and all(map(any, product))


def test_the_caption_stage_returns_candidates(captioner, photos):
    keys, images = photos
    caption = make_caption_fn(_config(captioner), "cpu")
    out = caption({"_row_key": keys, "_image": images, "status": [OK, OK], "error": [None, None]})
    assert out["status"] == [OK, OK] and all(out["_candidates"]), out

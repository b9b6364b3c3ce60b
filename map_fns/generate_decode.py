"""Sampling the recipe's candidates with any captioner transformers loads (BLIP-2, GIT, Florence-2, Qwen2-VL, ...).

These models run through their own `generate`, so their own image handling, caches and position rules stay
theirs. The recipe's rules live in one logits processor, `RecipeSampler`: it reads the model's raw logits,
applies the same per-step rules as BLIP's fast path (`map_fns.sampling.next_tokens`), draws each candidate's
token from that candidate's own uniforms, records it, and hands `generate` a distribution with all its mass on
that token, so `generate`'s own sampling can only pick it. The model's generation settings are replaced by its
end, start and padding tokens alone, so nothing else filters the logits first.

Rows go through `generate` in groups of equal input shape (prompt length, image patches): no padding, so a
row's candidates never depend on which rows share its batch. `generate` expands each image's inputs to one row
per candidate. Where the image is placeholder tokens of a causal prompt (Qwen2-VL, SmolVLM, LLaVA), the prompt
runs once per image and its cache is copied to the candidates (`GenericSampler._prefilled`). PaliGemma's prompt
attends both ways (a prefix-LM), so it cannot be cut before its last token, and GIT keeps the image outside its
prompt: both run image and prompt once per candidate. BLIP-2 and InstructBLIP encode the image once and re-run
only its query tokens; Florence-2 encodes once, as every encoder-decoder in `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor

from map_fns import sampling
from map_fns.captioners import CaptionerFamily, prompt_for
from map_fns.pretrained import load_trained

if TYPE_CHECKING:  # the caption stage imports this module when its model loads; only the type comes back
    from map_fns.caption import CaptionConfig

MEMORY_PROBE_SIDE = 1344  # the square image whose input length sizes batches: big images arrive 1344 px on
# their short side (the fetch stage's default --resize_min_side); the batcher halves a batch that still runs out
PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # one entry per token
STRUCTURAL_GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def load_generic_captioner(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """Model (AutoModelForImageTextToText) and processor (AutoProcessor), via `from_pretrained`; refuses
    checkpoints that leave weights random. Its generation settings keep only its structural tokens (BLIP-2's and
    InstructBLIP's language models have nothing else: transformers gives a part no generation_config.json)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    model = load_trained(AutoModelForImageTextToText, name, "captioner", dtype=dtype).to(device)
    own = model.generation_config
    model.generation_config = GenerationConfig(**{key: getattr(own, key) for key in STRUCTURAL_GENERATION_KEYS
                                                  if getattr(own, key, None) is not None})
    return model, AutoProcessor.from_pretrained(name)


def end_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a caption: the generation config's (chat models list end of turn and end of text)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"captioner {model.name_or_path} names no end token (eos_token_id) in its generation "
                         "config or tokenizer; captions could not end")
    return [eos] if isinstance(eos, int) else list(eos)


def forward_inputs(model) -> set[str]:
    """The inputs the model's generate passes on: the named arguments of its forward and of its input preparation."""
    import inspect

    return {name for method in (model.forward, model.prepare_inputs_for_generation)
            for name, parameter in inspect.signature(method).parameters.items()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD}


def prompt_inputs(processor, model, family: CaptionerFamily, prompt: str, image) -> dict[str, torch.Tensor]:
    """The processor's inputs for one image and the prompt (through the chat template for chat models).

    Only tensors the model's generate takes are kept (BERT tokenizers add token_type_ids, which GIT refuses).
    A decoder-only model continues its input, so an end-of-input token the tokenizer appends (BERT's [SEP],
    e.g. GIT's) is dropped: it would end the caption before it starts.
    """
    if family.chat:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = processor(images=[[image]], text=[text], return_tensors="pt")
    else:
        batch = processor(images=[image], text=[prompt], return_tensors="pt")
    accepted = forward_inputs(model) - {"labels"}  # PaliGemma's processor adds training targets
    batch = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor) and key in accepted}
    sep = getattr(processor.tokenizer, "sep_token_id", None)
    if not model.config.is_encoder_decoder and sep is not None and batch["input_ids"][0, -1] == sep:
        batch = {key: value[:, :-1] if key in PER_TOKEN_INPUTS else value for key, value in batch.items()}
    return batch


class RecipeSampler(LogitsProcessor):
    """The recipe's rules for one `generate` call whose rows are (image, candidate) pairs, image-major.

    Step i (generated tokens so far, counted from the first call): raw P(EOS) over the threshold ends the
    candidate without a token; else EOS is blocked below min length, the repetition penalty, top-k and top-p
    apply and the candidate's uniform for step i picks the token; a candidate that reaches its max length ends
    there. An end is handed to `generate` as the first end token, which is not kept.
    """

    def __init__(self, cfg: CaptionConfig, uniforms: torch.Tensor, max_lengths: torch.Tensor, eos: list[int]):
        self.cfg, self.uniforms, self.max_lengths, self.eos = cfg, uniforms, max_lengths, eos
        rows = uniforms.shape[0]
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finished = torch.zeros(rows, dtype=torch.bool)
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        device = scores.device
        max_lengths = self.max_lengths.to(device)
        uniforms = self.uniforms[:, min(step, self.uniforms.shape[1] - 1)].to(device)
        tokens, eos_stop = sampling.next_tokens(
            scores, input_ids, step, uniforms, eos_token_ids=self.eos, min_length=self.cfg.min_length,
            repetition_penalty=self.cfg.repetition_penalty, top_k=self.cfg.top_k, top_p=self.cfg.top_p,
            eos_stop_probability=self.cfg.eos_stop_probability,
        )
        ends = eos_stop | (max_lengths <= step) | torch.isin(tokens, torch.tensor(self.eos, device=device))
        chosen = torch.where(ends, self.eos[0], tokens)
        self._record(chosen.cpu(), ends.cpu())
        only_chosen = torch.full_like(scores, float("-inf"))
        return only_chosen.scatter(-1, chosen.unsqueeze(-1), 0.0)

    def _record(self, chosen: torch.Tensor, ends: torch.Tensor) -> None:
        for row in (~self.finished & ~ends).nonzero().flatten().tolist():
            self.tokens[row].append(int(chosen[row]))
        self.finished |= ends


class GenericSampler:
    """Samples every candidate of a batch of images with a captioner of `family` (not BLIP)."""

    def __init__(self, cfg: CaptionConfig, family: CaptionerFamily, device: torch.device, dtype: torch.dtype):
        self.cfg, self.family, self.device = cfg, family, device
        self.model, self.processor = load_generic_captioner(cfg.captioner, device, dtype)
        self.tokenizer = self.processor.tokenizer
        self.prompt = prompt_for(family, cfg.caption_prompt)
        self.eos = end_token_ids(self.model, self.tokenizer)
        pad = self.model.generation_config.pad_token_id
        self.pad = pad if pad is not None else self.eos[0]  # what `generate` appends to a finished candidate
        self.num_steps = max(cfg.max_lengths)

    def bytes_per_image(self) -> int:
        """Rough working memory of one image's candidates: their prompt's activations at prefill, their caches
        and the fp32 vocabulary-sized tensors of a sampling step; the prompt length is measured on a square
        image of MEMORY_PROBE_SIDE pixels."""
        from PIL import Image

        probe = Image.new("RGB", (MEMORY_PROBE_SIDE, MEMORY_PROBE_SIDE))
        prompt_len = self.inputs(probe)["input_ids"].shape[1]
        text = self.model.config.get_text_config(decoder=True)
        width = self.model.dtype.itemsize
        heads = getattr(text, "num_attention_heads", 1)
        kv_width = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        layers = text.num_hidden_layers
        positions = prompt_len + self.num_steps
        prefill = prompt_len * (4 * text.hidden_size + 2 * getattr(text, "intermediate_size", 4 * text.hidden_size))
        cache = layers * 2 * positions * kv_width * head_dim
        sampling_bytes = text.vocab_size * 40
        prefills = 1 if self.family.prefill_once else self.cfg.num_candidates
        candidates = self.cfg.num_candidates
        return (prefills * prefill + candidates * cache) * width + candidates * sampling_bytes

    def inputs(self, image) -> dict[str, torch.Tensor]:
        return prompt_inputs(self.processor, self.model, self.family, self.prompt, image)

    @torch.inference_mode()
    def candidate_ids(self, images: list, row_keys: list[str]) -> list[list[list[int]] | ValueError]:
        """Generated token ids (end token excluded) per image and candidate; for an image the processor refuses
        (Qwen2-VL: an aspect ratio over 200, e.g. a 5x3000 banner), its ValueError, so that one row fails alone."""
        per_image: list[dict | ValueError] = []
        for image in images:
            try:
                per_image.append(self.inputs(image))
            except ValueError as refused:
                per_image.append(refused)
        groups: dict[tuple, list[int]] = {}
        for i, batch in enumerate(per_image):
            if isinstance(batch, ValueError):
                continue
            shapes = tuple((key, tuple(value.shape[1:])) for key, value in sorted(batch.items()))
            groups.setdefault((i,) if self.family.prefill_once else shapes, []).append(i)
        found: list = [batch if isinstance(batch, ValueError) else [] for batch in per_image]
        for members in groups.values():
            batch = {key: torch.cat([per_image[i][key] for i in members]) for key in per_image[members[0]]}
            ids = self._generate(batch, [row_keys[i] for i in members])
            for i, image_ids in zip(members, ids):
                found[i] = image_ids
        return found

    def _generate(self, batch: dict[str, torch.Tensor], row_keys: list[str]) -> list[list[list[int]]]:
        from transformers import LogitsProcessorList

        n = self.cfg.num_candidates
        uniforms = torch.cat([sampling.row_uniforms(self.cfg.seed, key, n, self.num_steps) for key in row_keys])
        max_lengths = torch.tensor(self.cfg.max_lengths).repeat(len(row_keys))
        sampler = RecipeSampler(self.cfg, uniforms, max_lengths, self.eos)
        inputs = {key: value.to(self.device, self.model.dtype if value.is_floating_point() else None)
                  for key, value in batch.items()}
        if self.family.prefill_once:
            inputs = self._prefilled(inputs)
        self.model.generate(**inputs, do_sample=True, top_k=0, num_return_sequences=n, eos_token_id=self.eos,
                            pad_token_id=self.pad, max_new_tokens=self.num_steps + 1,
                            logits_processor=LogitsProcessorList([sampler]))
        return [sampler.tokens[i * n : (i + 1) * n] for i in range(len(row_keys))]

    def _prefilled(self, inputs: dict[str, torch.Tensor]) -> dict:
        """One image's prompt, all but its last token, run through the model once (image features and the language
        model's pass over the image tokens), its cache copied to every candidate: `generate`'s inputs then, which
        go on from that cache with the last token. For models whose image is placeholder tokens of a causal prompt;
        one image per call, since the multimodal positions a prefill stores (Qwen2-VL's rope deltas) are per row."""
        prefix = {key: value[:, :-1] if key in PER_TOKEN_INPUTS else value for key, value in inputs.items()}
        cache = self.model(**prefix, use_cache=True).cache
        cache.batch_repeat_interleave(self.cfg.num_candidates)
        return {"cache": cache, **{key: value for key, value in inputs.items() if key in PER_TOKEN_INPUTS}}

    def __call__(self, images: list, row_keys: list[str]) -> list[list[str] | ValueError]:
        return [ids if isinstance(ids, ValueError) else unique_texts(self.tokenizer, ids)
                for ids in self.candidate_ids(images, row_keys)]


def unique_texts(tokenizer, candidate_ids: Sequence[Sequence[int]]) -> list[str]:
    """Decoded candidates in sampling order, special tokens skipped, stripped; exact duplicates and empties dropped."""
    texts = tokenizer.batch_decode([list(ids) for ids in candidate_ids], skip_special_tokens=True)
    return list(dict.fromkeys(text.strip() for text in texts if text.strip()))

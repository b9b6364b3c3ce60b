"""BLIP's fast path for the caption stage: load the model, and sample every candidate of a batch of images.

The vision encoder runs once per image; all candidates of all images then decode together, sharing their
image's cross-attention keys and values (`CandidateDecoder`), finished candidates leaving the batch every
few steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from map_fns import sampling
from map_fns.candidate_decoder import CandidateDecoder
from map_fns.captioners import BLIP, prompt_for
from map_fns.pretrained import load_trained

if TYPE_CHECKING:  # the caption stage imports this module when its model loads; only the type comes back
    from map_fns.caption import CaptionConfig


def load_captioner(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """BLIP model and processor via `from_pretrained`; refuses checkpoints that leave weights random."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = load_trained(BlipForConditionalGeneration, name, "captioner", dtype=dtype)
    return model.to(device), BlipProcessor.from_pretrained(name)


def pixel_values(image_processor, images: list, device):
    """BLIP's input for `images`: its own image processor, run on `device` (its torchvision backend)."""
    return image_processor(images, return_tensors="pt", device=device).pixel_values


class BlipSampler:
    """Samples every candidate of a batch of images with BLIP: its processor resizes and normalises the images on
    the model's device (the torchvision backend), then `sample_candidate_ids`."""

    def __init__(self, cfg: CaptionConfig, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device = cfg, device
        self.model, self.processor = load_captioner(cfg.captioner, device, dtype)
        text_config = self.model.config.text_config
        self.prompt = prompt_for(BLIP, cfg.caption_prompt)
        self.prompt_ids = prompt_token_ids(self.processor.tokenizer, self.prompt, text_config.bos_token_id,
                                           text_config.sep_token_id)
        self.num_steps = max(cfg.max_lengths)

    def bytes_per_image(self) -> int:
        return bytes_per_image(self.model, self.cfg.num_candidates, len(self.prompt_ids) + self.num_steps)

    def __call__(self, images: list, row_keys: list[str]) -> list[list[str]]:
        pixels = pixel_values(self.processor.image_processor, images, self.device)
        uniforms = torch.stack([sampling.row_uniforms(self.cfg.seed, key, self.cfg.num_candidates, self.num_steps)
                                for key in row_keys])
        ids = sample_candidate_ids(self.model, pixels.to(self.device, self.model.dtype), uniforms, self.cfg,
                                   self.prompt_ids)
        return [unique_captions(self.processor.tokenizer, image_ids, self.prompt_ids, self.prompt) for image_ids in ids]


def bytes_per_image(model, num_candidates: int, num_positions: int) -> int:
    """Rough working memory of one image in `sample_candidate_ids`, for sizing batches to free memory.

    Vision activations (MLP and attention scores of one layer, twice for input and output), the image's
    cross-attention keys and values, its candidates' self-attention caches, and the fp32 vocabulary-sized
    tensors of one sampling step (logits, softmax, sorted values and int64 indices, cumsum, masks).
    """
    vision, text = model.config.vision_config, model.config.text_config
    width = model.dtype.itemsize
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    vision_bytes = 2 * patches * (vision.intermediate_size + vision.num_attention_heads * patches) * width
    cross_bytes = text.num_hidden_layers * 2 * patches * text.hidden_size * width
    cache_bytes = num_candidates * text.num_hidden_layers * 2 * num_positions * text.hidden_size * width
    sampling_bytes = num_candidates * text.vocab_size * 40
    return vision_bytes + cross_bytes + cache_bytes + sampling_bytes


def prompt_token_ids(tokenizer, prompt: str, bos_token_id: int, sep_token_id: int) -> list[int]:
    """`[CLS] prompt [SEP]` -> `[DEC] prompt`, as BLIP's generate does, without losing a word to a missing SEP."""
    ids = tokenizer(prompt).input_ids
    if ids[-1] == sep_token_id:
        ids = ids[:-1]
    return [bos_token_id] + ids[1:]


@torch.inference_mode()
def sample_candidate_ids(model, pixel_values: torch.Tensor, uniforms: torch.Tensor, cfg: CaptionConfig,
                         prompt_ids: list[int], compact_every: int | None = None) -> list[list[list[int]]]:
    """Generated token ids (EOS excluded) per image and candidate; `uniforms` is (images, candidates, steps).

    Finished candidates are dropped every `compact_every` steps (the only host-device synchronisation in
    the loop; default 1 on CPU, where it costs nothing, 4 on GPUs); until then they run along unread.
    """
    eos = model.config.text_config.sep_token_id
    num_images, num_candidates, num_steps = uniforms.shape
    device = pixel_values.device
    compact_every = compact_every or (1 if device.type == "cpu" else 4)
    prompt = torch.tensor(prompt_ids, device=device)
    prompt_len = len(prompt_ids)
    decoder = CandidateDecoder(model.text_decoder, model.vision_model(pixel_values=pixel_values)[0],
                               num_candidates, prompt_len + num_steps)
    logits = decoder.prefill(prompt)

    total = num_images * num_candidates
    rows = torch.arange(total, device=device)  # candidate index of each decoding row
    uniforms = uniforms.reshape(total, num_steps).to(device)
    max_lengths = torch.tensor(cfg.max_lengths, device=device).repeat(num_images)
    sequences = torch.cat([prompt.expand(total, -1), prompt.new_zeros(total, num_steps)], dim=1)
    lengths = torch.zeros(total, dtype=torch.long, device=device)
    finished = torch.zeros(total, dtype=torch.bool, device=device)  # per decoding row
    for step in range(num_steps):
        tokens, eos_stop = sampling.next_tokens(
            logits, sequences[rows, : prompt_len + step], step, uniforms[rows, step],
            eos_token_ids=[eos], min_length=cfg.min_length, repetition_penalty=cfg.repetition_penalty,
            top_k=cfg.top_k, top_p=cfg.top_p, eos_stop_probability=cfg.eos_stop_probability,
        )
        sequences[rows, prompt_len + step] = tokens
        ends_without_token = eos_stop | (tokens == eos)
        ends_now = ~finished & (ends_without_token | (max_lengths[rows] <= step + 1))
        lengths[rows] = torch.where(ends_now, step + 1 - ends_without_token.long(), lengths[rows])
        finished |= ends_now
        if step + 1 == num_steps:
            break
        if (step + 1) % compact_every == 0:
            alive = (~finished).nonzero().squeeze(-1)
            if len(alive) == 0:
                break
            if len(alive) < len(rows):
                decoder.compact(alive)
                rows, finished, tokens = rows[alive], finished[alive], tokens[alive]
        logits = decoder.step(tokens)
    generated = [ids[:length] for ids, length in zip(sequences[:, prompt_len:].tolist(), lengths.tolist())]
    return [generated[i * num_candidates : (i + 1) * num_candidates] for i in range(num_images)]


# The reference ran transformers 4.15 (BLIP's requirements), whose `decode` cleaned up tokenization spaces by
# default ("a man ' s hat" -> "a man's hat"); transformers 5 leaves that to the tokenizer's config, which BLIP's lacks.
CLEAN_UP_SPACES = True


def unique_captions(tokenizer, candidate_ids: list[list[int]], prompt_ids: list[int], prompt: str) -> list[str]:
    """Decoded candidates in sampling order, exact duplicates and empty strings dropped.

    As the reference's `sample` did: each candidate is decoded after its prompt and the prompt's length in
    characters is cut off, so a first word piece that continues the prompt's last word ("of" + "##s") loses as
    many characters as the prompt has beyond the decoded text.
    """
    texts = tokenizer.batch_decode([prompt_ids + ids for ids in candidate_ids], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=CLEAN_UP_SPACES)
    captions = (text[len(prompt):].strip() for text in texts)
    return list(dict.fromkeys(caption for caption in captions if caption))

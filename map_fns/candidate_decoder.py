"""BLIP's text decoder stepped for many sampled candidates per image, with the model's own modules.

The arithmetic is `model.text_decoder(...)`'s with a KV cache; only the memory layout differs, for sampling
C candidates of every image at once:

- Cross-attention keys and values are computed once per image and shared by its candidates. Cross-attention
  has no mask, so the C candidates' queries can attend as one C-long query block against their image's keys.
  Calling `text_decoder` with the encoder states repeated C times would cache C copies: for BLIP-large,
  12 layers x 2 x 577 x 768 values per candidate, 0.85 GB per image of 40 candidates in bf16.
- The self-attention cache is allocated once for the longest candidate and written in place.
- Finished candidates leave only at `compact`, which the caller runs every few steps: shapes change only
  there, so the steps in between launch GPU work without waiting for it.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention as attend


class CandidateDecoder:
    """Decoding state of `num_candidates` candidates for each image of a batch."""

    def __init__(self, text_decoder, image_embeds: torch.Tensor, num_candidates: int, max_positions: int):
        config = text_decoder.config
        self.embeddings = text_decoder.bert.embeddings
        self.layers = text_decoder.bert.encoder.layer
        self.head = text_decoder.cls
        self.num_heads = config.num_attention_heads
        self.num_candidates = num_candidates
        self.max_positions = max_positions
        self.cross = [
            (self._split(layer.crossattention.self.key(image_embeds)),
             self._split(layer.crossattention.self.value(image_embeds)))
            for layer in self.layers
        ]
        num_images, device = image_embeds.shape[0], image_embeds.device
        # Which image (index into `cross`) and which of its C query slots each decoding row is.
        self.owner = torch.arange(num_images, device=device).repeat_interleave(num_candidates)
        self.slot = torch.arange(num_candidates, device=device).repeat(num_images)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, positions, hidden) -> (rows, heads, positions, head_dim)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        """(rows, heads, positions, head_dim) -> (rows, positions, hidden)."""
        return x.transpose(1, 2).flatten(2)

    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt once per image, then give each candidate a copy of its image's self-attention cache.

        Returns the next-token logits of every candidate (image-major), all equal within an image.
        """
        num_images = self.cross[0][0].shape[0]
        x = self.embeddings(input_ids=prompt_ids.expand(num_images, -1))
        prompt_len = prompt_ids.shape[-1]
        for layer, (cross_keys, cross_values) in zip(self.layers, self.cross):
            attention = layer.attention.self
            keys, values = self._split(attention.key(x)), self._split(attention.value(x))
            context = attend(self._split(attention.query(x)), keys, values, is_causal=True)
            x = layer.attention.output(self._merge(context), x)
            query = self._split(layer.crossattention.self.query(x))
            x = layer.crossattention.output(self._merge(attend(query, cross_keys, cross_values)), x)
            x = layer.feed_forward_chunk(x)
            self.keys.append(self._allocate(keys))
            self.values.append(self._allocate(values))
        self.length = prompt_len
        return self.head(x[:, -1]).repeat_interleave(self.num_candidates, dim=0)

    def _allocate(self, prompt_states: torch.Tensor) -> torch.Tensor:
        """A (candidates, heads, max_positions, head_dim) cache holding the prompt's keys or values."""
        rows, heads, prompt_len, head_dim = prompt_states.shape
        cache = prompt_states.new_empty(rows * self.num_candidates, heads, self.max_positions, head_dim)
        cache[:, :, :prompt_len] = prompt_states.repeat_interleave(self.num_candidates, dim=0)
        return cache

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per decoding row; returns the next-token logits, (rows, vocab)."""
        position = self.length
        positions = self.embeddings.position_ids[:, position : position + 1]
        x = self.embeddings(input_ids=tokens.unsqueeze(-1), position_ids=positions)
        for layer, keys, values, cross in zip(self.layers, self.keys, self.values, self.cross):
            attention = layer.attention.self
            keys[:, :, position] = self._split(attention.key(x))[:, :, 0]
            values[:, :, position] = self._split(attention.value(x))[:, :, 0]
            context = attend(self._split(attention.query(x)), keys[:, :, : position + 1], values[:, :, : position + 1])
            x = layer.attention.output(self._merge(context), x)
            context = self._cross_attend(self._split(layer.crossattention.self.query(x)), *cross)
            x = layer.crossattention.output(self._merge(context), x)
            x = layer.feed_forward_chunk(x)
        self.length += 1
        return self.head(x[:, 0])

    def _cross_attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Each row's one query against its own image's keys, computed as per-image query blocks."""
        rows, heads, _, head_dim = query.shape
        blocks = query.new_zeros(keys.shape[0], self.num_candidates, heads, head_dim)
        blocks[self.owner, self.slot] = query[:, :, 0]
        out = attend(blocks.transpose(1, 2), keys, values).transpose(1, 2)
        return out[self.owner, self.slot].unsqueeze(2)

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the decoding rows `keep` (ascending indices); drop images none of whose rows remain."""
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]
        images, self.owner = torch.unique_consecutive(self.owner[keep], return_inverse=True)
        self.slot = self.slot[keep]
        if len(images) < self.cross[0][0].shape[0]:
            self.cross = [(k[images], v[images]) for k, v in self.cross]

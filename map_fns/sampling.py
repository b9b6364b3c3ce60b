"""The reference recipe's per-step sampling rules, as pure tensor functions.

LAION's loop (a hand-written sampler around the BLIP text decoder) does, at every step `i` counted in
generated tokens: read P(EOS) from the model's raw softmax; block EOS while `i < min_length`; apply the
repetition penalty to every token already in the sequence (prompt included); keep the top-k logits, then the
top-p nucleus; sample. A candidate ends when it samples EOS, when `i` reaches its max length, or when the raw
P(EOS) exceeds the early-stop threshold (then without the sampled token).

We keep those rules and replace `torch.multinomial` (one global RNG, so a row's captions depended on its
neighbours) with inverse-CDF sampling from uniforms that each row draws from its own generator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def row_seed(seed: int, row_key: str) -> int:
    """A 63-bit seed that depends only on the run seed and the row's identity (never on its batch)."""
    digest = hashlib.blake2b(f"{seed}\x00{row_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def row_uniforms(seed: int, row_key: str, num_candidates: int, num_steps: int) -> torch.Tensor:
    """The uniforms a row's candidates consume, one per (candidate, step), from the row's own generator."""
    generator = torch.Generator().manual_seed(row_seed(seed, row_key))
    return torch.rand((num_candidates, num_steps), generator=generator)


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of tokens already present in each row's sequence."""
    seen = logits.gather(-1, tokens)
    return logits.scatter(-1, tokens, torch.where(seen < 0, seen * penalty, seen / penalty))


def top_k_top_p_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit below the k-th largest, then every token outside the top-p nucleus.

    The nucleus keeps a token while the probability mass of the tokens ranked above it is <= top_p, so the
    most likely token always survives.
    """
    k = min(top_k, logits.shape[-1])
    cutoff = torch.topk(logits, k, dim=-1).values[:, -1:]
    logits = logits.masked_fill(logits < cutoff, float("-inf"))
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.cumsum(sorted_logits.softmax(-1), dim=-1)
    remove_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    remove_sorted[:, 1:] = cumulative[:, :-1] > top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token whose cumulative-probability interval holds `u * total`; zero-probability tokens are never hit."""
    cdf = torch.cumsum(probs, dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return tokens.clamp_max(probs.shape[-1] - 1)


def next_tokens(
    logits: torch.Tensor,
    sequences: torch.Tensor,
    step: int,
    uniforms: torch.Tensor,
    *,
    eos_token_ids: Sequence[int],
    min_length: int,
    repetition_penalty: float,
    top_k: int,
    top_p: float,
    eos_stop_probability: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recipe for every active candidate: (sampled tokens, stopped early by high P(EOS)).

    A model with several end tokens (chat models: end of turn and end of text) has P(EOS) = their summed
    probability, and min length blocks each of them.
    """
    logits = logits.float()
    eos = list(eos_token_ids)
    eos_stop = logits.softmax(-1)[:, eos].sum(-1) > eos_stop_probability
    if step < min_length:
        logits = logits.clone()
        logits[:, eos] = float("-inf")
    logits = apply_repetition_penalty(logits, sequences, repetition_penalty)
    probs = top_k_top_p_filter(logits, top_k, top_p).softmax(-1)
    return sample_inverse_cdf(probs, uniforms), eos_stop

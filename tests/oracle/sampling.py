"""The reference's BLIP sampling loop, one image at a time, recording why each candidate ended.

Transcribes `generate` and `sample` of `docker/sampling.py` with the settings `docker/c_h2.py` ran. At step
`i` (tokens generated so far) every unfinished candidate re-runs its whole sequence through the text
decoder (the reference kept no cache) and:

1. reads P(EOS) from the softmax of the unmodified logits;
2. blocks EOS while `i < min_length`;
3. applies the repetition penalty to every token of its sequence, prompt included;
4. keeps the top-k logits, then the top-p nucleus (a token stays while the mass ranked above it is <= top_p);
5. samples a token;
6. completes when it sampled EOS, when `max_length <= i`, or when log P(EOS) > log(threshold) (not gated
   by min_length); a completed candidate keeps the tokens it had before this step's sample.

Captions are the decoded sequences with the prompt's characters cut off, unique, in completion order.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from map_fns.sampling import row_uniforms

EOS_BLOCKED_IN_NUCLEUS = "eos_blocked_in_nucleus"  # EOS was blocked at a step where it would have been kept
FORCED_STOP = "forced_stop"  # raw P(EOS) over the threshold ended the candidate
FORCED_STOP_BEFORE_MIN_LENGTH = "forced_stop_before_min_length"
SAMPLED_EOS = "sampled_eos"
MAX_LENGTH = "max_length"  # the candidate generated its max length
EMPTY = "empty"  # a candidate that ended with no token
DUPLICATE = "duplicate"  # a candidate whose caption an earlier one already had


@dataclass(frozen=True)
class Recipe:
    """The sampling settings of `docker/c_h2.py` (`make_caption`) and `sample`'s defaults."""

    prompt: str = "a picture of "
    top_p: float = 0.2427084604681384
    top_k: int = 9607
    min_length: int = 5
    max_lengths: tuple[int, ...] = (20,) * 8 + (30,) * 8 + (30,) * 8 + (45,) * 8 + (45,) * 8
    repetition_penalty: float = 1.3
    force_eos_probability: float = 0.17937666742679637

    @property
    def num_candidates(self) -> int:
        return len(self.max_lengths)


@dataclass
class Sampled:
    """One image's result: the reference's caption list, each candidate's generated token ids (by candidate
    index, prompt and EOS excluded), and how often each event happened."""

    captions: list[str]
    generated: list[list[int]]
    events: Counter = field(default_factory=Counter)


def penalize_repetitions(logits: torch.Tensor, sequences: torch.Tensor, penalty: float) -> torch.Tensor:
    """`repetition_penalty_apply`: in each row, every token present in that row's sequence has its logit divided
    by `penalty` when positive, multiplied when negative, once however often it occurs."""
    present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, sequences, True)
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(present, penalized, logits)


def keep_top_k_then_nucleus(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`top_k_top_p_filtering_batch`: a mask of the tokens that survive, per row.

    Top-k keeps every logit at least the k-th largest (the reference's `logits < cutoff` removal; k beyond the
    vocabulary keeps all, where the reference's 30524-token vocabulary never got there). The nucleus then ranks
    the survivors from the most likely and removes a token once the mass ranked above it exceeds top_p.
    """
    keep = torch.ones_like(logits, dtype=torch.bool)
    if top_k < logits.shape[-1]:
        kth_largest = logits.sort(dim=-1, descending=True).values[:, top_k - 1 : top_k]
        keep &= logits >= kth_largest
    probs = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    ranked_probs, ranked_tokens = probs.sort(dim=-1, descending=True)
    running = ranked_probs.cumsum(-1)
    mass_above = torch.cat([torch.zeros_like(running[:, :1]), running[:, :-1]], dim=-1)
    return keep & torch.zeros_like(keep).scatter_(1, ranked_tokens, mass_above <= top_p)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the token whose interval of the cumulative distribution (in vocabulary order) holds
    `uniform` x total: the first whose running sum exceeds it. Stands in for `torch.multinomial` (the
    documented departure)."""
    running = torch.cumsum(probs, dim=-1)
    targets = uniforms.unsqueeze(-1) * running[:, -1:]
    return (running <= targets).sum(-1).clamp_max(probs.shape[-1] - 1)


def prompt_ids(tokenizer, prompt: str, bos_token_id: int) -> list[int]:
    """`sample`'s prompt: the tokenized prompt with its first token replaced by BOS and its last one removed."""
    ids = tokenizer(prompt).input_ids
    return [bos_token_id] + ids[1:-1]


@torch.inference_mode()
def sample_image(model, tokenizer, pixel_values: torch.Tensor, uniforms: torch.Tensor,
                 recipe: Recipe = Recipe()) -> Sampled:
    """`sample` + `generate` for one image (`pixel_values` (1, 3, H, W)); `uniforms` (candidates, steps)."""
    text_config = model.config.text_config
    prompt = prompt_ids(tokenizer, recipe.prompt, text_config.bos_token_id)
    image_embeds = model.vision_model(pixel_values=pixel_values)[0]

    def next_logits(sequences: torch.Tensor) -> torch.Tensor:
        states = image_embeds.expand(len(sequences), -1, -1)
        return model.text_decoder(input_ids=sequences, encoder_hidden_states=states).logits[:, -1, :]

    events = Counter()
    completed = sample_sequences(next_logits, prompt, [text_config.sep_token_id], uniforms, recipe, events)
    captions = _unique_captions(tokenizer, [sequence for _, sequence in completed], recipe.prompt, events)
    generated = [sequence[len(prompt):] for _, sequence in sorted(completed)]
    return Sampled(captions, generated, events)


@torch.inference_mode()
def sample_sequences(next_logits, prompt: list[int], eos: list[int], uniforms: torch.Tensor, recipe: Recipe,
                     events: Counter) -> list[tuple[int, list[int]]]:
    """`generate`'s loop over any model: `next_logits(sequences)` gives the logits after each whole sequence.
    Returns (candidate, whole sequence) in completion order. `eos` may hold several end tokens (a chat model's
    end of turn and end of text, our extension): P(EOS) is their summed probability, min length blocks each."""
    sequences = torch.tensor([prompt] * recipe.num_candidates)
    alive = torch.arange(recipe.num_candidates)  # candidate index of each row of `sequences`
    max_lengths = torch.tensor(recipe.max_lengths)
    completed: list[tuple[int, list[int]]] = []
    for step in range(max(recipe.max_lengths)):
        if len(alive) == 0:
            break
        logits = next_logits(sequences).float()
        tokens, reasons = _step(logits, sequences, step, uniforms[alive, step], max_lengths[alive], recipe, eos,
                                events)
        ended = torch.tensor([reason is not None for reason in reasons])
        for row in ended.nonzero().flatten().tolist():
            completed.append((int(alive[row]), sequences[row].tolist()))
            events[reasons[row]] += 1
            events[EMPTY] += step == 0
            events[FORCED_STOP_BEFORE_MIN_LENGTH] += reasons[row] == FORCED_STOP and step < recipe.min_length
        sequences = torch.cat([sequences, tokens.unsqueeze(-1)], dim=1)[~ended]
        alive = alive[~ended]
    completed += zip(alive.tolist(), sequences.tolist())
    events[MAX_LENGTH] += len(alive)
    return completed


def _step(logits, sequences, step, uniforms, max_lengths, recipe, eos, events) -> tuple[torch.Tensor, list]:
    """Steps 1-6 for every unfinished candidate: the sampled tokens, and per candidate the reason it ended now
    (None: it goes on)."""
    eos_log_probability = logits.softmax(-1)[:, eos].sum(-1).log()
    blocked = logits.clone()
    eos_kept_unblocked = torch.zeros(len(logits), dtype=torch.bool)
    if step < recipe.min_length:
        blocked[:, eos] = float("-inf")
        unblocked = penalize_repetitions(logits, sequences, recipe.repetition_penalty)
        eos_kept_unblocked = keep_top_k_then_nucleus(unblocked, recipe.top_k, recipe.top_p)[:, eos].any(-1)
    penalized = penalize_repetitions(blocked, sequences, recipe.repetition_penalty)
    keep = keep_top_k_then_nucleus(penalized, recipe.top_k, recipe.top_p)
    tokens = draw(penalized.masked_fill(~keep, float("-inf")).softmax(-1), uniforms)
    forced = eos_log_probability > math.log(recipe.force_eos_probability)
    reasons = []
    for token, at_max, forced_now in zip(tokens.tolist(), (max_lengths <= step).tolist(), forced.tolist()):
        reasons.append(MAX_LENGTH if at_max else FORCED_STOP if forced_now else SAMPLED_EOS if token in eos else None)
    goes_on = torch.tensor([reason is None for reason in reasons], dtype=torch.bool)
    events[EOS_BLOCKED_IN_NUCLEUS] += int((eos_kept_unblocked & goes_on).sum())
    return tokens, reasons


def _unique_captions(tokenizer, sequences: list[list[int]], prompt: str, events: Counter) -> list[str]:
    """`sample`'s output: each sequence decoded whole (transformers 4.15's `decode`, which cleaned up tokenization
    spaces by default), the prompt's length in characters cut off, first of each text kept (an empty caption
    included, as the reference kept it)."""
    captions: list[str] = []
    for ids in sequences:
        caption = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)[len(prompt):]
        if caption in captions:
            events[DUPLICATE] += 1
        else:
            captions.append(caption)
    return captions


def reference_uniforms(seed: int, row_key: str, recipe: Recipe = Recipe()) -> torch.Tensor:
    """The per-row uniforms both sides draw from: (candidates, longest max length)."""
    return row_uniforms(seed, row_key, recipe.num_candidates, max(recipe.max_lengths))

"""The recipe's per-step rules on hand-made logits whose right answer is known."""

import math

import pytest
import torch

from map_fns import sampling
from map_fns.caption import CaptionConfig, candidate_max_lengths, parse_length_schedule


def test_default_schedule_is_8_at_20_16_at_30_16_at_45():
    assert CaptionConfig().max_lengths == [20] * 8 + [30] * 16 + [45] * 16


def test_schedule_scales_to_other_candidate_counts_by_largest_remainder():
    schedule = parse_length_schedule("8:20,16:30,16:45")
    assert candidate_max_lengths(schedule, 10) == [20] * 2 + [30] * 4 + [45] * 4
    # 7 * (0.2, 0.4, 0.4) = (1.4, 2.8, 2.8): floors 1, 2, 2 and the two largest remainders get one more.
    assert candidate_max_lengths(schedule, 7) == [20] + [30] * 3 + [45] * 3


@pytest.mark.parametrize("bad", ["", "8", "8:20,x:30", "0:20", "8:-1", "8:20;16:30"])
def test_bad_schedule_is_one_line_naming_it(bad):
    with pytest.raises(ValueError, match="--length_schedule") as err:
        parse_length_schedule(bad)
    assert repr(bad) in str(err.value) and "\n" not in str(err.value)


def test_repetition_penalty_shrinks_seen_tokens_towards_zero_and_leaves_others():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = sampling.apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 1.3)
    assert torch.allclose(out, torch.tensor([[2.0 / 1.3, -1.0 * 1.3, 0.5, 3.0]]))


def _log(probs):
    return torch.tensor([[math.log(p) for p in probs]])


def test_top_p_keeps_tokens_while_the_mass_ranked_above_them_is_within_p():
    logits = _log([0.15, 0.5, 0.05, 0.3])  # ranked: token 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    kept = lambda p: torch.isfinite(sampling.top_k_top_p_filter(logits, 100, p))[0].tolist()  # noqa: E731
    assert kept(0.45) == [False, True, False, False]  # 0.5 above token 3 exceeds 0.45
    assert kept(0.6) == [False, True, False, True]  # 0.8 above token 0 exceeds 0.6
    assert kept(0.9) == [True, True, False, True]
    assert kept(1e-6) == [False, True, False, False]  # the most likely token always survives


def test_top_k_cuts_before_the_nucleus():
    logits = _log([0.15, 0.5, 0.05, 0.3])
    assert torch.isfinite(sampling.top_k_top_p_filter(logits, 2, 1.0))[0].tolist() == [False, True, False, True]


def test_inverse_cdf_never_draws_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]]).repeat(4, 1)
    tokens = sampling.sample_inverse_cdf(probs, torch.tensor([0.0, 0.2499, 0.25, 0.99999]))
    assert tokens.tolist() == [1, 1, 3, 3]


def _step(logits, step, min_length=3, threshold=0.5, uniforms=None):
    return sampling.next_tokens(
        logits, torch.tensor([[2]]).repeat(len(logits), 1), step,
        torch.zeros(len(logits)) if uniforms is None else uniforms,
        eos_token_ids=[0], min_length=min_length, repetition_penalty=1.0, top_k=100, top_p=1.0,
        eos_stop_probability=threshold,
    )


def test_eos_cannot_be_sampled_before_min_length_but_can_after():
    logits = _log([0.4, 0.3, 0.3])  # EOS (id 0) is the likeliest token, below the early-stop threshold
    tokens, stopped = _step(logits, step=2)
    assert tokens.item() != 0 and not stopped.item()
    tokens, stopped = _step(logits, step=3)
    assert tokens.item() == 0 and not stopped.item()


def test_early_stop_reads_the_models_raw_eos_probability_at_every_step():
    """As in LAION's loop: raw P(EOS) above the threshold ends a candidate even before min_length."""
    logits = _log([0.6, 0.2, 0.2])
    assert _step(logits, step=0, threshold=0.5)[1].item()
    assert not _step(logits, step=0, threshold=0.7)[1].item()


def test_row_uniforms_depend_only_on_seed_and_row_key():
    a = sampling.row_uniforms(0, "http://x/1.jpg", 40, 45)
    assert a.shape == (40, 45)
    assert torch.equal(a, sampling.row_uniforms(0, "http://x/1.jpg", 40, 45))
    assert not torch.equal(a, sampling.row_uniforms(1, "http://x/1.jpg", 40, 45))
    assert not torch.equal(a, sampling.row_uniforms(0, "http://x/2.jpg", 40, 45))

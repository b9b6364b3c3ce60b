"""The batched CLIP scorer gives the plain per-caption scores: trimmed text, sub-batches and threads change nothing."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from map_fns.batching import MEMORY_HEADROOM
from map_fns.clip_score import ClipScorer, bytes_per_image, encode_text_trimmed

CAPTIONS = [
    ["a", "a dog sitting on the grass next to a red car parked in front of a small white house by the sea",
     "two birds", "a man riding a horse"],
    ["a kite in the sky", "the"],
    [],
    ["a plate of food on a wooden table", "a bus", "a cat lying on a bed under a window in a quiet room"],
    ["snow"],
]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (30 + 17 * i, 80 - 9 * i, 3), dtype=np.uint8)) for i in range(5)]


@pytest.fixture(scope="module", params=["ranker", "reranker"])
def spec(request, tiny_models) -> str:
    """Both tiny CLIPs: the ViT ranker and the ModifiedResNet reranker."""
    return getattr(tiny_models, request.param)


@pytest.fixture(scope="module")
def scorer(spec) -> ClipScorer:
    return ClipScorer(spec, "cpu")


def _per_caption(scorer: ClipScorer, images, captions) -> list[list[float]]:
    """The plain computation: each image preprocessed alone, each caption encoded alone at all 77 tokens."""
    model, scores = scorer.model, []
    with torch.no_grad():
        for image, row in zip(images, captions):
            image_emb = _unit(model.encode_image(scorer.preprocess(image)[None])[0])
            scores.append([float(_unit(model.encode_text(scorer.tokenizer([c]))[0]) @ image_emb) for c in row])
    return scores


def _unit(embedding: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embedding.double(), dim=-1)


def _assert_same_scores(actual, expected):
    assert [len(row) for row in actual] == [len(row) for row in expected]
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert np.argsort(got, kind="stable").tolist() == np.argsort(want, kind="stable").tolist()


def test_trimmed_text_equals_encode_text_at_full_context(scorer):
    tokens = scorer.tokenizer([c for row in CAPTIONS for c in row])
    longest = int(tokens.argmax(dim=-1).max()) + 1
    seen = []
    hook = scorer.model.transformer.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    with torch.no_grad():
        trimmed = encode_text_trimmed(scorer.model, tokens)
        hook.remove()
        full = scorer.model.encode_text(tokens)
    assert seen == [longest] and longest < 30  # the text tower really ran on fewer positions
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_text_is_not_trimmed_when_the_model_pools_elsewhere(tiny_models):
    scorer = ClipScorer(tiny_models.ranker, "cpu")
    scorer.model.text_pool_type = "last"  # reads the 77th position: cutting before it would change every embedding
    tokens = scorer.tokenizer(["a dog", "a very long caption about a red car in the street"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(scorer.model, tokens), scorer.model.encode_text(tokens))


def test_similarities_equal_the_per_caption_computation(scorer):
    images = _images()
    _assert_same_scores(scorer.similarities(images, CAPTIONS), _per_caption(scorer, images, CAPTIONS))


def _record_image_batches(scorer: ClipScorer, monkeypatch, fail_above=None) -> list[int]:
    """Images per forward; a forward of more than `fail_above` images runs out of memory."""
    sizes, real = [], scorer.model.encode_image

    def encode_image(pixels):
        sizes.append(len(pixels))
        if fail_above is not None and len(pixels) > fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pixels)

    monkeypatch.setattr(scorer.model, "encode_image", encode_image)
    return sizes


def test_one_image_per_forward_gives_the_same_scores(scorer, spec, monkeypatch):
    images = _images()
    whole = scorer.similarities(images, CAPTIONS)
    one = ClipScorer(spec, "cpu", model_batch_size=1)
    sizes = _record_image_batches(one, monkeypatch)
    _assert_same_scores(one.similarities(images, CAPTIONS), whole)
    assert sizes == [1, 1, 1, 1]  # the row without captions is never encoded


def test_sub_batches_sized_to_free_memory_give_the_same_scores(scorer, monkeypatch):
    images = _images()
    whole = scorer.similarities(images, CAPTIONS)
    two_images = scorer.batcher.bytes_per_item * 2.5 / MEMORY_HEADROOM
    monkeypatch.setattr(scorer.batcher, "_free_memory", lambda: int(two_images))
    sizes = _record_image_batches(scorer, monkeypatch)
    _assert_same_scores(scorer.similarities(images, CAPTIONS), whole)
    assert sizes == [2, 2]


def test_a_forward_that_runs_out_of_memory_is_halved_and_retried(tiny_models, monkeypatch):
    images = _images()
    scorer = ClipScorer(tiny_models.ranker, "cpu")
    whole = scorer.similarities(images, CAPTIONS)
    sizes = _record_image_batches(scorer, monkeypatch, fail_above=2)
    _assert_same_scores(scorer.similarities(images, CAPTIONS), whole)
    assert sizes == [4, 2, 2]


def test_images_are_preprocessed_off_the_calling_thread(tiny_models, monkeypatch):
    scorer = ClipScorer(tiny_models.ranker, "cpu")
    threads, real = set(), scorer.preprocess

    def preprocess(image):
        threads.add(threading.get_ident())
        return real(image)

    monkeypatch.setattr(scorer, "preprocess", preprocess)
    scorer.similarities(_images(), CAPTIONS)
    assert threads and threading.get_ident() not in threads


def test_bf16_reaches_the_model_and_stays_close_to_fp32(scorer, spec):
    images = _images()
    fp32 = scorer.similarities(images, CAPTIONS)
    half = ClipScorer(spec, "cpu", dtype=torch.bfloat16)
    linears = [m for m in half.model.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in half.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)  # open_clip's mixed precision, not .to()
    bf16 = half.similarities(images, CAPTIONS)
    for got, want in zip(bf16, fp32):
        np.testing.assert_allclose(got, want, rtol=0, atol=0.05)
    assert bf16 != fp32  # really computed in another precision


def test_the_memory_estimate_scales_with_precision_and_captions(tiny_models):
    model = ClipScorer(tiny_models.reranker, "cpu").model
    assert bytes_per_image(model, torch.float32) == 2 * bytes_per_image(model, torch.bfloat16)
    assert bytes_per_image(model, torch.float32, captions=5) < bytes_per_image(model, torch.float32)


def test_a_caption_longer_than_the_context_is_scored_on_its_first_tokens(scorer):
    """A chat captioner's paragraph exceeds CLIP's 77-token context: it is scored, on its first 76 tokens (the
    last position holds end-of-text). Two captions that differ only after that score the same, and one that
    differs inside it does not."""
    opening = " ".join(["a dog sitting on the grass next to a red car"] * 10)  # about 100 tokens
    long_captions = [opening + " in the snow.", opening + " on a beach at night with two birds in the sky."]
    differs_early = "a cat " + opening
    image = _images()[:1]
    same_tail, early = scorer.similarities(image * 2, [long_captions, [long_captions[0], differs_early]])
    assert len(scorer.tokenizer([opening])[0]) == 77 and int(scorer.tokenizer([opening])[0].argmax()) == 76
    assert same_tail[0] == same_tail[1]
    assert early[0] != early[1]

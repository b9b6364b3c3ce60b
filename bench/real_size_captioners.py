"""Captioners of the non-BLIP families at their real sizes with random weights, built offline for
`bench/recipe.py --captioner`.

Each is its family's transformers class with the config of one public checkpoint (named in `CAPTIONERS`; the
numbers are those checkpoints' config.json and preprocessor settings), saved with a processor of the same
classes that works offline, so the caption stage loads it as it loads the real one and does the real model's
arithmetic: the same FLOPs and memory, only the numbers are noise. Tokenizers have the real vocabulary size and
special tokens; their ordinary tokens are whole words of CLIP's BPE vocabulary (as `bench.real_size_models`
does for BLIP), so every id a random model samples decodes to text the rankers read at a realistic length.

Built once, atomically, under `CACHE/real-size-v1/captioner-<model_type>/` (fp32 safetensors).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.real_size_models import VERSION_DIR, bert_layout_vocab, clip_words
from builder.tiny_models import _build_once


@dataclass(frozen=True)
class RealSizeCaptioner:
    """mirrors: the checkpoint whose configuration this copies. save: writes model + processor into a folder."""

    mirrors: str
    save: Callable[[Path], None]


def build_real_size_captioner(model_type: str, cache_dir: str | Path) -> str:
    """Build (once) the real-size captioner of `model_type` under `cache_dir` and return its folder."""
    if model_type not in CAPTIONERS:
        raise ValueError(f"no real-size captioner of model_type {model_type!r} (available: {', '.join(CAPTIONERS)})")
    target = Path(cache_dir).resolve() / VERSION_DIR / f"captioner-{model_type}"
    if not target.is_dir():
        print(f"building {target.name} ({CAPTIONERS[model_type].mirrors}, random weights, fp32) ...", flush=True)
        start = time.perf_counter()
        _build_once(target, CAPTIONERS[model_type].save)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"  {size / 2**30:.2f} GiB in {time.perf_counter() - start:.0f}s", flush=True)
    return str(target)


# ---------------------------------------------------------------------------------------------- tokenizers


def wordpiece_tokenizer(vocab_size: int):
    """BERT's layout over `vocab_size` ids (`bench.real_size_models.bert_layout_vocab`), as GIT's tokenizer."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=bert_layout_vocab(vocab_size), model_max_length=512)


@functools.cache
def _trained_byte_level_bpe(size: int) -> tuple[dict[str, int], list]:
    """A byte-level BPE (vocabulary, merges) trained on CLIP's words: whole words encode as one token each."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([" ".join(clip_words())], trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], model["merges"]


def byte_level_tokenizer(regular_size: int, specials: list[str]):
    """A GPT-2-style byte-level BPE `tokenizers.Tokenizer`: ids below `regular_size` are the trained pieces,
    then two-word pieces (" red dog") until every id decodes; `specials` follow, from `regular_size` on."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = _trained_byte_level_bpe(regular_size)
    vocab = dict(vocab)
    words = clip_words()
    pairs = (f"Ġ{words[i]}Ġ{words[(i + step) % len(words)]}" for step in range(1, 100) for i in range(len(words)))
    while len(vocab) < regular_size:
        vocab.setdefault(next(pairs), len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    assert tokenizer.get_vocab_size() == regular_size + len(specials)
    return tokenizer


# ---------------------------------------------------------------------------------------------- models


def _save(model, processor, out: Path) -> None:
    print(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters; saving ...", flush=True)
    processor.save_pretrained(out)
    model.save_pretrained(out)


def _save_git_large(out: Path) -> None:
    """microsoft/git-large-coco: CLIP ViT-L/14 at 384 px, a 6-layer BERT-base-wide decoder, vocabulary 30522."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    config = GitConfig(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=384, patch_size=14),
        vocab_size=30522, hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=1024, bos_token_id=101, eos_token_id=102, pad_token_id=0,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 384}, crop_size={"height": 384, "width": 384})
    processor = GitProcessor(image_processor=image_processor, tokenizer=wordpiece_tokenizer(config.vocab_size))
    _save(GitForCausalLM(config).eval(), processor, out)


QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # ids 151643.. as Qwen2's
QWEN2_VL_CHAT_TEMPLATE = (  # Qwen2-VL's: a default system message, then the turns, an image as vision tokens
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _save_qwen2_vl_2b(out: Path) -> None:
    """Qwen/Qwen2-VL-2B-Instruct: a 675M ViT (14 px patches, 2x2 merge, any resolution up to 12.8 MP) and a
    1.5B Qwen2 decoder (28 layers, width 1536, GQA 12/2 heads, tied embeddings), vocabulary 151936."""
    from transformers import (Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tokenizer = Qwen2Tokenizer(tokenizer_object=byte_level_tokenizer(151643, QWEN2_SPECIALS), unk_token=None,
                               bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               model_max_length=32768)
    ids = dict(zip(QWEN2_SPECIALS, tokenizer.convert_tokens_to_ids(QWEN2_SPECIALS)))
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         max_window_layers=28, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    pixels = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, image_mean=OPENAI_CLIP_MEAN,
                  image_std=OPENAI_CLIP_STD)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    _save(model, processor, out)


SMOLVLM_SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
                     "<image>", "<global-img>"]
                    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
SMOLVLM_CHAT_TEMPLATE = (  # SmolVLM's: "User:" / "Assistant:" turns ended by <end_of_utterance>
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}{% else %}:{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% elif content['type'] == 'text' %} {{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _save_smolvlm_256m(out: Path) -> None:
    """HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP base/16 at 512 px tiles (an image split into up to 4x4 tiles
    of its 2048 px resize plus a global view, 64 tokens each after a 4x pixel shuffle) and SmolLM2-135M
    (30 layers, width 576, GQA 9/3 heads), vocabulary 49280."""
    from transformers import (GPT2Tokenizer, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor,
                              SmolVLMProcessor, SmolVLMVideoProcessor)

    tokenizer = GPT2Tokenizer(tokenizer_object=byte_level_tokenizer(49280 - len(SMOLVLM_SPECIALS), SMOLVLM_SPECIALS),
                              bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
                              unk_token="<|endoftext|>", model_max_length=8192)
    ids = dict(zip(SMOLVLM_SPECIALS, tokenizer.convert_tokens_to_ids(SMOLVLM_SPECIALS)))
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=ids["<|im_start|>"],
                         eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|im_end|>"]),
        scale_factor=4, image_token_id=ids["<image>"], tie_word_embeddings=False,
    )
    image_processor = SmolVLMImageProcessor(do_image_splitting=True, size={"longest_edge": 2048},
                                            max_image_size={"longest_edge": 512})
    processor = SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=SmolVLMVideoProcessor(), image_seq_len=64,
                                 chat_template=SMOLVLM_CHAT_TEMPLATE)
    model = SmolVLMForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = ids["<|im_end|>"]
    _save(model, processor, out)


CAPTIONERS = {
    "git": RealSizeCaptioner("microsoft/git-large-coco", _save_git_large),
    "qwen2_vl": RealSizeCaptioner("Qwen/Qwen2-VL-2B-Instruct", _save_qwen2_vl_2b),
    "smolvlm": RealSizeCaptioner("HuggingFaceTB/SmolVLM-256M-Instruct", _save_smolvlm_256m),
}

"""Tiny random-weight captioners of the non-BLIP families, built offline, for tests of `--captioner`.

Each is of the real checkpoint's classes (`AutoModelForImageTextToText` and `AutoProcessor` load it), with the real
tokenizer class over a vocabulary made from `tiny_models.caption_corpus()`, the real special tokens and stop tokens,
and a few layers of width 32-64. Captions come out as gibberish; every loading, prompting and decoding path runs for
real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.tiny_models import VERSION_DIR, _build_once, caption_corpus
from map_fns.captioners import family_of

if TYPE_CHECKING:  # torch and transformers load only when a model is actually built
    import torch
    from transformers import BertTokenizer, PreTrainedModel, ProcessorMixin

TINY_FAMILIES = ("blip-2", "git", "qwen2_vl")
MORE_TINY_FAMILIES = ("instructblip", "florence2", "paligemma", "smolvlm", "llava")  # plain builds only, no `peaked`
IMAGE_SIZE = 32  # BLIP-2's and GIT's fixed input size; Qwen2-VL resizes each image within QWEN_PIXELS
QWEN_PIXELS = (28 * 28 * 2, 28 * 28 * 6)  # min, max pixels: 2-6 image tokens, more for a wide image than a tall one
QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                       "<|image_pad|>", "<|video_pad|>")
# Qwen2-VL's own chat template, images only: a default system turn, then each message's text and image items.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SMOLVLM_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                          "<global-img>", *(f"<row_{row}_col_{col}>" for row in (1, 2) for col in (1, 2)))
# SmolVLM's own chat template, images only: "User:<image>prompt<end_of_utterance>", then "Assistant:"
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# llava-hf/llava-interleave-qwen-*'s chat template, images only: ChatML turns, each image an `<image>` line
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_captioner(model_type: str, cache_dir: str | Path, *, peaked: bool = False) -> str:
    """Build (once) the tiny captioner of `model_type` under `cache_dir/tiny-v1/`; returns its folder.

    `peaked=True` gives the same model with its next-token distributions made peaked, image-steered and with a
    likely EOS at some steps (see `_peak`), so that the recipe's sampling rules fire on it.
    """
    if model_type not in _BUILDERS:
        raise ValueError(f"no tiny captioner of model_type {model_type!r} "
                         f"(tiny ones: {', '.join(TINY_FAMILIES + MORE_TINY_FAMILIES)})")
    if peaked and model_type not in _PEAKING:
        raise ValueError(f"no peaked tiny captioner of model_type {model_type!r} (peaked ones: {', '.join(_PEAKING)})")
    target = Path(cache_dir).resolve() / VERSION_DIR / f"captioner-{model_type}{'-peaked' if peaked else ''}"
    _build_once(target, lambda out: _save(out, model_type, peaked))
    return str(target)


def _save(out: Path, model_type: str, peaked: bool) -> None:
    model, processor = _BUILDERS[model_type]()
    if peaked:
        _peak(model, processor, model_type)
    processor.save_pretrained(out)
    model.save_pretrained(out)


def _byte_level_bpe(special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2-style byte-level BPE (vocab, merges) trained on the caption corpus; `special_tokens` get ids 0..n-1."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return _trained_vocab_and_merges(bpe, trainer)


def _trained_vocab_and_merges(bpe, trainer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`bpe` trained by `trainer` on the caption corpus, as the (vocab, merges) a transformers tokenizer takes."""
    import json

    bpe.train_from_iterator(caption_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _metaspace_bpe(special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A SentencePiece-style BPE (vocab, merges) as Gemma's: words start with `▁`, with byte-fallback pieces
    `<0x00>`..`<0xFF>`, trained on the caption corpus; `special_tokens` get ids 0..n-1."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # merges stay within words
    byte_pieces = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=special_tokens + byte_pieces)
    return _trained_vocab_and_merges(bpe, trainer)


def _tiny_blip2() -> tuple[PreTrainedModel, ProcessorMixin]:
    """BLIP-2 with an OPT decoder, as Salesforce/blip2-opt-*: OPT's GPT-2 BPE tokenizer (`</s>` as bos, prepended),
    `<image>` placeholders that the processor expands to `num_query_tokens`, and EOS on the newline token."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                              GPT2Tokenizer)

    vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>",
                              pad_token="<pad>", add_bos_token=True, model_max_length=512)
    num_query_tokens = 4
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens)
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # the real checkpoints end a caption with "\n", not `</s>`
    config = Blip2Config(
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            encoder_hidden_size=32, cross_attention_frequency=1),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32,
                         ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=newline,
                         pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=tokenizer.bos_token_id, eos=newline, pad=tokenizer.pad_token_id)
    return model, processor


def _wordpiece_tokenizer() -> BertTokenizer:
    """BERT's WordPiece, as GIT's: every corpus word whole, and each of their characters as a word start or a `##`
    piece, so any lowercase word encodes. Listed, not trained: tokenizers' WordPiece trainer returns another
    vocabulary on each call (ties broken in hash order), which would make the build irreproducible."""
    from tokenizers import pre_tokenizers
    from transformers import BertTokenizer

    split = pre_tokenizers.BertPreTokenizer()
    words = sorted({word for sentence in caption_corpus() for word, _ in split.pre_tokenize_str(sentence)})
    characters = sorted(set("".join(words)))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *characters, *(f"##{c}" for c in characters)]
    return BertTokenizer(vocab={token: i for i, token in enumerate(dict.fromkeys(tokens))}, model_max_length=512)


def _tiny_git() -> tuple[PreTrainedModel, ProcessorMixin]:
    """GIT as microsoft/git-*: CLIP image processor, BERT WordPiece; a caption starts at `[CLS]`, ends at `[SEP]`."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = _wordpiece_tokenizer()
    config = GitConfig(
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=128, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GitForCausalLM(config).eval()
    _set_generation_ids(model, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id, pad=tokenizer.pad_token_id)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, GitProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _tiny_qwen2_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2-VL as Qwen/Qwen2-VL-*-Instruct: Qwen2's byte-level BPE with its special tokens, the chat template, a
    vision tower whose image-token count follows the image's size, and M-RoPE."""
    from transformers import (Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    vocab, merges = _byte_level_bpe([])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(QWEN_SPECIAL_TOKENS),
                               model_max_length=512)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|endoftext|>", *QWEN_SPECIAL_TOKENS)}
    min_pixels, max_pixels = QWEN_PIXELS
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        video_processor=Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=ids["<|endoftext|>"], eos=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                        pad=ids["<|endoftext|>"])
    return model, processor


def _t5_unigram_tokenizer():
    """T5's Unigram tokenizer (`<pad>` 0, `</s>` 1, `<unk>` 2) over every corpus word whole (`▁word`) and each of
    their characters, with or without `▁`, so any lowercase word encodes. Listed, not trained: tokenizers' Unigram
    trainer returns another vocabulary on some calls, which would make the build irreproducible."""
    from transformers import T5Tokenizer

    words = sorted({word for sentence in caption_corpus() for word in sentence.split()})
    characters = sorted(set("".join(words)))
    pieces = [(f"▁{word}", -5.0) for word in words] + [(f"▁{c}", -10.0) for c in characters] + \
        [(c, -10.0) for c in characters]
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    return T5Tokenizer(vocab=specials + list(dict(pieces).items()), extra_ids=0, model_max_length=512)


def _tiny_instructblip() -> tuple[PreTrainedModel, ProcessorMixin]:
    """InstructBLIP as Salesforce/instructblip-flan-t5-*: a Flan-T5 (encoder-decoder) language model with T5's
    Unigram tokenizer, and a Q-Former that reads the prompt too, through its own BERT WordPiece tokenizer."""
    from transformers import (BlipImageProcessor, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor)

    tokenizer = _t5_unigram_tokenizer()
    num_query_tokens = 4
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tokenizer,  # adds `<image>` to it
                                      qformer_tokenizer=_wordpiece_tokenizer(), num_query_tokens=num_query_tokens)
    config = InstructBlipConfig(
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2,
                           initializer_range=0.02),  # the default 1e-10 maps every image alike
        qformer_config=dict(vocab_size=len(processor.qformer_tokenizer), hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2, encoder_hidden_size=32,
                            cross_attention_frequency=1),
        text_config=dict(model_type="t5", vocab_size=len(tokenizer), d_model=32, d_ff=64, num_layers=2, num_heads=2,
                         d_kv=16, decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         initializer_factor=3.0),  # as tiny_models' T5: at 1.0 the image hardly changes the logits
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    model = InstructBlipForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=tokenizer.pad_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    return model, processor


def _tiny_florence2() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Florence-2 as florence-community/Florence-2-*: a DaViT vision tower (stride 32: a 64-px image gives 2x2 visual
    tokens and their mean), a BART encoder-decoder with BART's byte-level BPE, and `<image>` placeholders that the
    processor puts before the question it makes of a task token (`<CAPTION>`: "What does the image describe?")."""
    from transformers import BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, \
        Florence2Processor

    vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"},
                              model_max_length=512)
    side = 2 * IMAGE_SIZE
    image_processor = CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False,
                                         image_seq_length=(side // 32) ** 2 + 1)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<s>", "<pad>", "</s>")}
    config = Florence2Config(
        vision_config=dict(depths=(1, 1, 1, 1), embed_dim=(8, 16, 32, 32), num_heads=(1, 2, 2, 2),
                           num_groups=(1, 2, 2, 2), window_size=2, drop_path_rate=0.0, projection_dim=32,
                           max_position_embeddings=8, max_temporal_embeddings=4),
        text_config=dict(model_type="bart", vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=128, bos_token_id=ids["<s>"], pad_token_id=ids["<pad>"],
                         eos_token_id=ids["</s>"], decoder_start_token_id=ids["</s>"],
                         init_std=0.2),  # at the default 0.02 the image moves the first logits by ~1e-4
        image_token_id=tokenizer.image_token_id,
    )
    model = Florence2ForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=ids["<s>"], eos=ids["</s>"], pad=ids["<pad>"])
    model.generation_config.decoder_start_token_id = ids["</s>"]
    return model, processor


def _tiny_paligemma() -> tuple[PreTrainedModel, ProcessorMixin]:
    """PaliGemma as google/paligemma-*: a SigLIP vision tower whose 16 patches become 16 `<image>` tokens before
    `<bos>`, the prompt and a newline (the processor's layout), a Gemma decoder with Gemma's BPE, EOS `<eos>`."""
    from transformers import GemmaTokenizer, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, \
        SiglipImageProcessor

    vocab, merges = _metaspace_bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=512)
    patch_size = 8
    image_seq_length = (IMAGE_SIZE // patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                           image_seq_length=image_seq_length)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds `<image>`
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=IMAGE_SIZE, patch_size=patch_size,
                           hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           projection_dim=32),
        text_config=dict(model_type="gemma", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=processor.image_token_id, projection_dim=32,
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    return model, processor


def _tiny_smolvlm() -> tuple[PreTrainedModel, ProcessorMixin]:
    """SmolVLM as HuggingFaceTB/SmolVLM-*-Instruct: SmolLM's byte-level BPE with its image and turn tokens, the chat
    template, and image splitting: an image up to 64 px is cut into 32-px tiles (as many as its shape needs, each
    4 `<image>` tokens after pixel shuffle) plus the whole image, so the prompt's length follows the shape."""
    from transformers import (GPT2Tokenizer, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor,
                              SmolVLMProcessor, SmolVLMVideoProcessor)

    vocab, merges = _byte_level_bpe(["<|endoftext|>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                              unk_token="<|endoftext|>", pad_token="<|im_end|>",
                              extra_special_tokens=list(SMOLVLM_SPECIAL_TOKENS), model_max_length=512)
    patch_size, scale_factor = 8, 2
    tile = {"longest_edge": IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size=tile),
        video_processor=SmolVLMVideoProcessor(size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size=tile),
        tokenizer=tokenizer,
        image_seq_len=(IMAGE_SIZE // patch_size) ** 2 // scale_factor**2,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|im_start|>", "<|im_end|>",
                                                                       "<end_of_utterance>", "<image>")}
    config = SmolVLMConfig(
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=patch_size, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, bos_token_id=ids["<|im_start|>"],
                         eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|im_end|>"]),
        scale_factor=scale_factor, image_token_id=ids["<image>"],
    )
    model = SmolVLMForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=ids["<|im_start|>"], eos=ids["<end_of_utterance>"], pad=ids["<|im_end|>"])
    return model, processor


def _tiny_llava() -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA as llava-hf/llava-interleave-qwen-*: a SigLIP vision tower whose 16 patches (all kept: strategy "full")
    replace the chat prompt's `<image>`, a projector, and a Qwen2 decoder with Qwen2's BPE and ChatML turns."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Tokenizer, \
        SiglipImageProcessor

    vocab, merges = _byte_level_bpe([])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=512,
                               extra_special_tokens=["<|im_start|>", "<|im_end|>", "<image>"])
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|endoftext|>", "<|im_end|>", "<image>")}
    patch_size = 8
    processor = LlavaProcessor(image_processor=SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                               tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="full",
                               chat_template=LLAVA_CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=IMAGE_SIZE, patch_size=patch_size,
                           hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<image>"], vision_feature_select_strategy="full", vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    _set_generation_ids(model, bos=ids["<|endoftext|>"], eos=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                        pad=ids["<|endoftext|>"])
    return model, processor


def _set_generation_ids(model: PreTrainedModel, *, bos: int, eos: int | list[int], pad: int) -> None:
    """The special ids `generate` reads, as the real checkpoint's generation_config.json lists them."""
    model.generation_config.bos_token_id = bos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad


@dataclass(frozen=True)
class _Peaking:
    """How one family's tiny model is made peaked. final_norm: the norm feeding the LM head, whose scale is every
    logit's scale. steer: makes the image, rather than the prompt, decide the next token (None: it already does)."""

    sharpness: float
    eos_bias: float
    final_norm: Callable[[PreTrainedModel], torch.nn.Module]
    steer: Callable[[PreTrainedModel], None] | None = None


def _loud_attention(model: PreTrainedModel) -> None:
    """GIT: every text layer's attention output x100. Its layers are post-LN, so the attention (over 17 image tokens
    and the caption so far) outweighs the token's own embedding, which alone would pick the same word for any image."""
    for layer in model.git.encoder.layer:
        layer.attention.output.dense.weight.mul_(100.0)


def _image_half(model: PreTrainedModel) -> None:
    """Qwen2-VL: image tokens in the first half of the hidden state, text embeddings in the second, and every layer's
    input norm x30 on the first half. Otherwise the 4-6 image tokens are a tenth of what the last position attends to
    (the chat prompt is the rest) and every image gets the same first word."""
    half = model.config.text_config.hidden_size // 2
    last = model.model.visual.merger.mlp[-1]
    last.weight[half:] = 0
    last.bias[half:] = 0
    model.model.language_model.embed_tokens.weight[:, :half] = 0
    for layer in model.model.language_model.layers:
        layer.input_layernorm.weight[:half] *= 30.0


_PEAKING = {
    "blip-2": _Peaking(30.0, 1.5, lambda model: model.language_model.model.decoder.final_layer_norm),
    "git": _Peaking(50.0, 80.0, lambda model: model.git.encoder.layer[-1].output.LayerNorm, _loud_attention),
    "qwen2_vl": _Peaking(50.0, 30.0, lambda model: model.model.language_model.norm, _image_half),
}


def _peak(model: PreTrainedModel, processor: ProcessorMixin, model_type: str) -> None:
    """Make `model`'s next-token distributions peaked, image-steered, and sometimes ending.

    The random model's logits are nearly flat (max probability ~0.004) and hardly depend on the image. Here: the
    family's `steer` makes the image decide; the final norm's weight (and bias) x`sharpness` scales every logit; and
    EOS's output row gains `eos_bias` * m / |m|^2, m the mean LM-head input over greedy rollouts on a few smooth
    synthetic images, so EOS's logit rises by about `eos_bias` where the hidden state is typical and less elsewhere:
    it wins at some steps of some images, not everywhere. Calibrated on synthetic images, checked on the sample
    photographs (tests/builder/test_tiny_captioners.py).
    """
    import torch

    peaking = _PEAKING[model_type]
    with torch.no_grad():
        if peaking.steer is not None:
            peaking.steer(model)
        norm = peaking.final_norm(model)
        norm.weight.mul_(peaking.sharpness)
        if getattr(norm, "bias", None) is not None:
            norm.bias.mul_(peaking.sharpness)
        typical = _mean_head_input(model, processor, model_type)
        eos = model.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        model.get_output_embeddings().weight[eos] += peaking.eos_bias * typical / typical.norm() ** 2


def _mean_head_input(model: PreTrainedModel, processor: ProcessorMixin, model_type: str) -> torch.Tensor:
    """The mean hidden state the LM head sees over 8-step greedy rollouts on four smooth synthetic images."""
    import torch
    from PIL import Image

    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0][:, -1]))
    gradient = Image.linear_gradient("L")
    try:
        for i, angle in enumerate((0, 45, 90, 135)):
            bands = (gradient.rotate(angle), gradient.rotate(angle + 90), gradient.rotate(angle + 180))
            image = Image.merge("RGB", bands).resize((48 + 8 * i, 40))
            inputs = caption_inputs(processor, model, model_type, image)
            model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    finally:
        hook.remove()
    return torch.cat(seen).mean(0)


def caption_inputs(processor: ProcessorMixin, model: PreTrainedModel, model_type: str, image) -> dict:
    """The inputs the caption stage gives `model` for `image` with the family's own prompt
    (`map_fns.generate_decode.prompt_inputs`); `generate` returns these `input_ids` followed by the new tokens."""
    from map_fns.generate_decode import prompt_inputs

    family = family_of(model_type)
    return prompt_inputs(processor, model, family, family.prompt, image)


_BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "blip-2": _tiny_blip2,
    "git": _tiny_git,
    "qwen2_vl": _tiny_qwen2_vl,
    "instructblip": _tiny_instructblip,
    "florence2": _tiny_florence2,
    "paligemma": _tiny_paligemma,
    "smolvlm": _tiny_smolvlm,
    "llava": _tiny_llava,
}

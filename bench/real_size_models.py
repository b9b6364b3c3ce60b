"""The four LAION-COCO models at their real sizes with random weights, built offline for `bench/recipe.py`.

Same classes, configs, on-disk formats and loaders as the real checkpoints (BLIP-large, OpenAI CLIP ViT-L/14
and RN50x64 through open_clip `local-dir:`, T5-base), so every stage does the real model's arithmetic:
the same FLOPs and memory, only the numbers are noise. The tokenizers are built directly, not trained:
BLIP's WordPiece and T5's Unigram vocabularies are whole words of CLIP's BPE vocabulary, so a random token
id decodes to a real word that CLIP reads as one token (caption lengths in CLIP tokens stay realistic),
and every id of each model's vocabulary decodes.

About 1.7 billion parameters, saved in fp32 safetensors: ~7 GB, built once under `CACHE/real-size-v1/`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from builder.tiny_models import TinyModelPaths, _build_once, _save_open_clip, _spread_resnet, model_paths

VERSION_DIR = "real-size-v1"  # bump when any model here changes, so stale caches are never reused

# Salesforce/blip-image-captioning-large's BERT-style special tokens and where its vocabulary has them.
BLIP_VOCAB_SIZE = 30524
BLIP_SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 30522: "[DEC]", 30523: "[ENC]"}
T5_VOCAB_SIZE = 32128  # the model's embedding rows (T5's 32000 pieces + 100 sentinels, padded)


def build_real_size_models(cache_dir: str | Path) -> TinyModelPaths:
    """Build (once, atomically, as `builder.tiny_models` does) and return the models under `cache_dir`."""
    root = Path(cache_dir).resolve() / VERSION_DIR
    builders = {
        "captioner": ("BLIP-large", _save_blip_large),
        "ranker": ("open_clip ViT-L-14", functools.partial(_save_clip, "ViT-L-14")),
        "reranker": ("open_clip RN50x64", functools.partial(_save_clip, "RN50x64")),
        "repairer": ("T5-base", _save_t5_base),
    }
    for name, (label, save) in builders.items():
        if (root / name).is_dir():
            continue
        print(f"building {name} ({label}, random weights, fp32) into {root / name} ...", flush=True)
        start = time.perf_counter()
        _build_once(root / name, save)
        size = sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())
        print(f"  {size / 2**30:.2f} GiB in {time.perf_counter() - start:.0f}s", flush=True)
    return model_paths(root)


@functools.cache
def clip_words() -> tuple[str, ...]:
    """Lower-case alphabetic whole words of open_clip's CLIP BPE vocabulary (~32,900), in its order."""
    from open_clip.tokenizer import SimpleTokenizer

    words = (token.removesuffix("</w>") for token in SimpleTokenizer().encoder if token.endswith("</w>"))
    return tuple(w for w in words if w.isascii() and w.isalpha() and w.islower())


def bert_layout_vocab(vocab_size: int) -> dict[str, int]:
    """BERT's layout (specials at BERT's ids) over `vocab_size` ids, every other id a whole CLIP word."""
    words = iter(clip_words())
    return {BLIP_SPECIALS.get(i) or next(words): i for i in range(vocab_size)}


def blip_tokenizer():
    """BLIP-large's tokenizer shape: 30524 ids, BERT specials at BERT's ids, bos `[DEC]`, extra `[ENC]`."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=bert_layout_vocab(BLIP_VOCAB_SIZE), bos_token="[DEC]", extra_special_tokens=["[ENC]"],
                         model_max_length=512)


def t5_tokenizer():
    """A Unigram vocabulary over all 32128 ids: pad 0, eos 1, unk 2, single characters, then `▁word`s."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -20.0)]
    pieces += [(chr(c), -20.0) for c in range(33, 127)]  # printable ASCII, so any caption encodes
    count = T5_VOCAB_SIZE - len(pieces)
    pieces += [("▁" + w, -5.0 - 5.0 * i / count) for i, w in zip(range(count), clip_words())]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _save_blip_large(out: Path) -> None:
    """Salesforce/blip-image-captioning-large's config (ViT-L/16 at 384 px, BERT-base decoder)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

    tokenizer = blip_tokenizer()
    assert len(tokenizer) == BLIP_VOCAB_SIZE
    config = BlipConfig(
        vision_config=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=384, patch_size=16, projection_dim=512, initializer_range=0.02,
        ),
        text_config=dict(
            vocab_size=BLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, projection_dim=768, max_position_embeddings=512, encoder_hidden_size=1024,
            bos_token_id=30522, sep_token_id=102, pad_token_id=0,
        ),
        projection_dim=512,
        image_text_hidden_size=256,
    )
    model = BlipForConditionalGeneration(config).eval()
    print(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters; saving ...", flush=True)
    image_processor = BlipImageProcessor(
        size={"height": 384, "width": 384}, resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    model.save_pretrained(out)


def _save_clip(name: str, out: Path) -> None:
    """open_clip's built-in config for `name`, with OpenAI's QuickGELU; the ResNet's dead init undone."""
    import open_clip

    model_cfg = {**open_clip.get_model_config(name), "quick_gelu": True}
    prepare = _spread_resnet if isinstance(model_cfg["vision_cfg"]["layers"], list) else None
    _save_open_clip(out, model_cfg, prepare=prepare)


def _save_t5_base(out: Path) -> None:
    """T5-base (v1.0: ReLU feed-forward, tied embeddings), as vennify/t5-base-grammar-correction."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = t5_tokenizer()
    assert len(tokenizer) == T5_VOCAB_SIZE
    config = T5Config(
        vocab_size=T5_VOCAB_SIZE, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
        num_heads=12, feed_forward_proj="relu", tie_word_embeddings=True,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config).eval()
    print(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters; saving ...", flush=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)

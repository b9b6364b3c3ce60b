"""Tiny random-weight stand-ins for the four LAION-COCO models, built offline.

`--preset tiny` and the tests run the real pipeline end to end without the Hub: each model here is of the
same class, saved in the same on-disk format and loaded by the same loaders as the real one
(BLIP-large, OpenAI CLIP ViT-L/14 and RN50x64 through open_clip, a T5 grammar model), only a few layers
wide and randomly initialised. Captions come out as gibberish; every code path still runs for real.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.tiny_heads import build_tiny_head, tiny_head_file

if TYPE_CHECKING:  # torch and the model libraries load only when a model is actually built
    import torch
    from transformers import BertTokenizer, BlipForConditionalGeneration, BlipProcessor, T5Tokenizer

logger = logging.getLogger(__name__)

VERSION_DIR = "tiny-v1"  # bump when any tiny model changes, so stale caches are never reused
SEED = 0
EMBED_DIM = 32  # the tiny CLIPs' embedding width, which the tiny heads read
BLIP_IMAGE_SIZE = 64
LOCAL_DIR_PREFIX = "local-dir:"

_SUBJECTS = (
    "dog cat man woman child boy girl bird horse cow sheep car bus truck train bicycle boat plane house "
    "tree flower table chair bed couch kitchen street beach mountain river city field road building "
    "pizza cake plate cup bottle laptop phone book clock umbrella kite surfboard skateboard"
).split()
_ADJECTIVES = "red blue green yellow white black brown small large old young happy wooden empty busy".split()
_VERBS = (
    "sitting standing running walking lying riding eating holding playing flying parked looking"
).split()
_PLACES = "grass table street beach snow water road field room window floor wall sky park".split()
_PREPOSITIONS = "on in near under next to with by at".split()
_TEMPLATES = (
    "a picture of a {adj} {subj} {verb} {prep} the {place}",
    "a photo of a {subj} {verb} {prep} a {adj} {place}",
    "an image of two {adj} {subj} {prep} the {place}",
    "there is a {adj} {subj} {verb} {prep} the {place}",
    "the {subj} is {verb} {prep} a {place}",
    "a close up of a {adj} {subj}",
    "a {subj} and a {subj2} {verb} together",
    "a {adj} {subj}, {verb} {prep} the {place}.",
    "grammar: a {subj} {verb} {prep} a {place}",
)


@dataclass(frozen=True)
class TinyModelPaths:
    """Where the tiny models live, in the form each stage's config takes."""

    captioner: str  # directory for BlipProcessor / BlipForConditionalGeneration.from_pretrained
    ranker: str  # open_clip spec "local-dir:/abs/path" (ViT)
    reranker: str  # open_clip spec "local-dir:/abs/path" (ModifiedResNet)
    repairer: str  # directory for AutoTokenizer / AutoModelForSeq2SeqLM.from_pretrained
    punsafe_head: str  # file of the NSFW head's layout, on the ranker's embeddings (builder/tiny_heads.py)
    aesthetic_head: str  # file of the aesthetic head's layout, likewise


def tiny_model_paths(cache_dir: str | Path) -> TinyModelPaths:
    """Where `build_tiny_models(cache_dir)` puts the models; builds nothing and imports nothing heavy."""
    return model_paths(Path(cache_dir).resolve() / VERSION_DIR)


def model_paths(root: Path) -> TinyModelPaths:
    """The models' places under `root` (one folder each), as the stage configs name them."""
    return TinyModelPaths(
        captioner=str(root / "captioner"),
        ranker=LOCAL_DIR_PREFIX + str(root / "ranker"),
        reranker=LOCAL_DIR_PREFIX + str(root / "reranker"),
        repairer=str(root / "repairer"),
        punsafe_head=str(root / "punsafe_head" / tiny_head_file("punsafe")),
        aesthetic_head=str(root / "aesthetic_head" / tiny_head_file("aesthetic")),
    )


def build_tiny_models(cache_dir: str | Path) -> TinyModelPaths:
    """Build (once) and return the tiny models under `cache_dir/tiny-v1/`.

    Each model is written to a temporary directory and renamed into place, so an existing directory is
    always complete: a second call, or a process racing this one, finds it and does nothing.
    """
    root = Path(cache_dir).resolve() / VERSION_DIR
    builders: dict[str, Callable[[Path], None]] = {
        "captioner": _save_blip,
        "ranker": _save_clip_vit,
        "reranker": _save_clip_resnet,
        "repairer": _save_t5,
        "punsafe_head": lambda out: build_tiny_head("punsafe", EMBED_DIM, out),
        "aesthetic_head": lambda out: build_tiny_head("aesthetic", EMBED_DIM, out),
    }
    for name, save in builders.items():
        _build_once(root / name, save)
    return tiny_model_paths(cache_dir)


def _build_once(target: Path, save: Callable[[Path], None]) -> None:
    """Run `save` into a temp dir next to `target` and atomically rename it into place, unless done."""
    if target.is_dir():
        return
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            save(tmp)
        try:
            os.replace(tmp, target)
            logger.info("built tiny model %s", target)
        except OSError:
            if not target.is_dir():  # a lost race leaves a complete target behind; anything else is real
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def caption_corpus() -> list[str]:
    """A few hundred deterministic caption-like sentences to train the tiny tokenizers on."""
    rng = random.Random(SEED)
    sentences = []
    for _ in range(500):
        template = rng.choice(_TEMPLATES)
        sentences.append(
            template.format(
                adj=rng.choice(_ADJECTIVES),
                subj=rng.choice(_SUBJECTS),
                subj2=rng.choice(_SUBJECTS),
                verb=rng.choice(_VERBS),
                prep=rng.choice(_PREPOSITIONS),
                place=rng.choice(_PLACES),
            )
        )
    # every corpus word also on its own, so each one ends up a whole-word token
    words = sorted({w for s in sentences for w in s.split()} | set(_SUBJECTS + _ADJECTIVES + _VERBS + _PLACES))
    return sentences + words


def _bert_tokenizer() -> BertTokenizer:
    """A WordPiece tokenizer shaped like BLIP's: BERT specials, bos `[DEC]`, extra `[ENC]`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    wordpiece.train_from_iterator(caption_corpus(), trainer=trainer)
    return BertTokenizer(
        vocab=wordpiece.get_vocab(),
        bos_token="[DEC]",
        extra_special_tokens=["[ENC]"],
        model_max_length=512,
    )


def _tiny_blip() -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """The tiny BLIP and its processor (random weights from the torch seed in force)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = _bert_tokenizer()
    config = BlipConfig(
        vision_config=dict(
            image_size=BLIP_IMAGE_SIZE,
            patch_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=32,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=32,
            max_position_embeddings=512,
            bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE})
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _save_blip(out: Path) -> None:
    model, processor = _tiny_blip()
    processor.save_pretrained(out)
    model.save_pretrained(out)


def build_peaked_captioner(dest: str | Path, *, sharpness: float = 20.0, eos_bias: float = 5.0,
                           image_weight: float = 100.0) -> str:
    """Build (once) at `dest` a tiny BLIP whose next-token distributions are peaked; returns the directory.

    The `tiny` preset's BLIP has nearly flat logits (raw P(EOS) <= 0.004) and a vision tower initialised at
    1e-10 (BLIP's vision `initializer_range`), so every image encodes alike: the early stop never fires and
    no two candidates agree. This one starts from the same weights and: re-initialises the vision tower
    (normal, std 0.02, seeded) so images differ; multiplies the decoder's cross-attention output projections by
    `image_weight` so the image steers the text; scales the LM head's last LayerNorm by `sharpness`, which
    scales every logit (the output embedding is tied to the input one and stays as it is); adds `eos_bias` to
    EOS's logit. Deterministic and offline, in about a second; load it like any captioner
    (`CaptionConfig(captioner=...)`, or transformers' `from_pretrained`).

    With the defaults and the recipe's settings, on the sample photographs (`builder/sample/sample.parquet`)
    the reference loop meets every rule: candidates stopped by raw P(EOS) over the threshold (before min
    length too, at step 0 for whole images: empty candidates), EOS blocked by min length where the nucleus
    would have kept it, sampled EOS, duplicates, and candidates reaching their max length.
    `dest` is built only if absent: another call with other arguments finds the first build.
    """
    dest = Path(dest).resolve()
    _build_once(dest, lambda out: _save_peaked_blip(out, sharpness, eos_bias, image_weight))
    return str(dest)


def _save_peaked_blip(out: Path, sharpness: float, eos_bias: float, image_weight: float) -> None:
    import torch

    model, processor = _tiny_blip()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.vision_model.named_parameters():
            if param.dim() >= 2 or "embedding" in name:  # weights, patch/class/position embeddings; not norms, biases
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        for layer in model.text_decoder.bert.encoder.layer:
            layer.crossattention.output.dense.weight.mul_(image_weight)
        last_norm = model.text_decoder.cls.predictions.transform.LayerNorm
        last_norm.weight.mul_(sharpness)
        last_norm.bias.mul_(sharpness)
        model.text_decoder.cls.predictions.bias[model.config.text_config.sep_token_id] += eos_bias
    processor.save_pretrained(out)
    model.save_pretrained(out)


def _clip_text_cfg() -> dict:
    """A tiny text tower over the real CLIP BPE vocabulary (open_clip's SimpleTokenizer, 49408 x 77)."""
    return {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def _save_open_clip(out: Path, model_cfg: dict, prepare: Callable[[torch.nn.Module], None] | None = None) -> None:
    """Write an open_clip `local-dir:` folder: `open_clip_config.json` + `open_clip_model.safetensors`."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.CLIP(**model_cfg).eval()
    if prepare is not None:
        prepare(model)
    preprocess_cfg = {
        "size": model_cfg["vision_cfg"]["image_size"],
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))


def _save_clip_vit(out: Path) -> None:
    vision_cfg = {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2}
    _save_open_clip(
        out, {"embed_dim": EMBED_DIM, "quick_gelu": True, "vision_cfg": vision_cfg, "text_cfg": _clip_text_cfg()}
    )


def _save_clip_resnet(out: Path) -> None:
    vision_cfg = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64}
    _save_open_clip(
        out,
        {"embed_dim": 32, "quick_gelu": True, "vision_cfg": vision_cfg, "text_cfg": _clip_text_cfg()},
        prepare=_spread_resnet,
    )


def _spread_resnet(model: torch.nn.Module) -> None:
    """Undo the zero-init residual branches: untrained, they map every image to the same embedding."""
    import torch

    for module in model.visual.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        for name, param in model.visual.named_parameters():
            if name.endswith("bn3.weight"):
                param.fill_(1.0)


def _t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer with T5's special ids: `<pad>` 0, `</s>` 1, `<unk>` 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    unigram.train_from_iterator(caption_corpus(), trainer=trainer)
    vocab = [(piece, score) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _save_t5(out: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        d_kv=16,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_factor=3.0,  # at the default 1.0 the tiny model says the same thing for most inputs
    )
    model = T5ForConditionalGeneration(config).eval()
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)

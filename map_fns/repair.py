"""Repair stage: a T5 grammar model fixes the chosen caption's grammar, as LAION-COCO did.

BLIP's sampled captions are often ungrammatical ("a dog sitting on on grass"); the repaired text becomes
`top_caption`, the dataset's main caption. Captions are beam-searched many at a time, sorted by length so
a sub-batch pads little; each one's result is what `generate` gives it alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from map_fns.flags import NONE, above, at_least, model_or_none
from map_fns.pretrained import load_trained
from map_fns.stage import Column, Stage, engine_loader, on_ok_rows

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WRITES = (Column("top_caption", "string"),)


@dataclass
class RepairConfig:
    repairer: str = field(
        default="vennify/t5-base-grammar-correction",
        metadata={"help": "seq2seq grammar model (Hub id or local dir), or 'none' to keep captions as chosen"},
    )
    repair_prefix: str = field(default="grammar: ", metadata={"help": "task prefix the grammar model expects"})
    repair_num_beams: int = field(default=2, metadata={"help": "beam width of the repair generation"})
    repair_max_new_tokens: int = field(default=64, metadata={"help": "longest repaired caption, in tokens"})
    repair_repetition_penalty: float = field(
        default=1.0, metadata={"help": "generate's repetition_penalty for the repair (1.0: none)"}
    )
    repair_early_stopping: bool = field(
        default=False, metadata={"help": "generate's early_stopping: end the beam search once every beam has finished"}
    )
    repair_clean_up_spaces: bool = field(
        default=False,
        metadata={"help": "decode with clean_up_tokenization_spaces (drops the space in ' .', ' ,', \" n't\", ...)"},
    )

    def __post_init__(self):
        model_or_none(self, "repairer")
        for flag in ("repair_num_beams", "repair_max_new_tokens"):
            at_least(self, flag, 1, integer=True)
        above(self, "repair_repetition_penalty", 0)

    def generate_kwargs(self) -> dict:
        """What the flags pass to `generate`: beam search, never sampling; anything else is the checkpoint's own
        generation config."""
        return {"num_beams": self.repair_num_beams, "max_new_tokens": self.repair_max_new_tokens,
                "repetition_penalty": self.repair_repetition_penalty, "early_stopping": self.repair_early_stopping,
                "do_sample": False}


def bytes_per_caption(model, num_beams: int, max_new_tokens: int) -> int:
    """Rough working memory of one caption in beam search, to size batches to free memory.

    Per beam, every decoder layer caches keys and values of its own tokens and of the encoded caption (taken
    to be as long: a repair barely changes length); the encoder's widest activation is its 4x-wide MLP; each
    step's fp32 scores over the vocabulary are held a few times (logits, log-softmax, beam scores, top-k).
    """
    config, width = model.config, model.dtype.itemsize
    caches = num_beams * config.num_hidden_layers * 2 * 2 * max_new_tokens * config.hidden_size * width
    encoder = max_new_tokens * 4 * config.hidden_size * width
    scores = num_beams * config.vocab_size * 4 * 4
    return caches + encoder + scores


def in_length_order(texts: list[str], lengths: list[int], run: Callable[[list[str]], list[str]]) -> list[str]:
    """`run` over `texts` sorted by `lengths`, so that sub-batches pad little; results in the texts' order."""
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    results = [""] * len(texts)
    for i, result in zip(order, run([texts[i] for i in order])):
        results[i] = result
    return results


def make_repair_fn(cfg: RepairConfig, device: str | torch.device, *, precision: str = "auto",
                   model_batch_size: int = 0) -> Callable[[dict[str, list]], dict[str, list]]:
    """Load the repairer once (not at all for 'none'); the returned batched fn adds `top_caption`.

    `precision` is resolved for `device` (`map_fns.precision`); captions go through `generate`
    `model_batch_size` at a time, or as many as fit in free memory for 0. 'none' ignores both.
    """
    if cfg.repairer == NONE:
        return on_ok_rows(_keep_raw, WRITES)
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from map_fns.batching import AutoBatcher
    from map_fns.precision import resolve_dtype

    device = torch.device(device)
    dtype = resolve_dtype(precision, device, "transformers")
    logger.info("loading repairer %s on %s in %s", cfg.repairer, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(cfg.repairer)
    # dtype through from_pretrained, not .to(): T5 keeps the layers it lists as fp32-only (`wo`) in fp32
    model = load_trained(AutoModelForSeq2SeqLM, cfg.repairer, "repairer", dtype=dtype).to(device)
    batcher = AutoBatcher("repair", device, bytes_per_caption(model, cfg.repair_num_beams, cfg.repair_max_new_tokens),
                          model_batch_size)

    def generate(texts: list[str]) -> list[str]:
        inputs = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        out = model.generate(**inputs, **cfg.generate_kwargs())
        texts = tokenizer.batch_decode(out, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=cfg.repair_clean_up_spaces)
        return [text.strip() for text in texts]

    def repair(rows: dict[str, list]) -> dict[str, list]:
        raw = rows["top_caption_raw"]
        texts = [cfg.repair_prefix + caption for caption in raw]
        lengths = [len(ids) for ids in tokenizer(texts).input_ids]
        with torch.inference_mode():
            repaired = in_length_order(texts, lengths, lambda ordered: batcher.map(ordered, generate))
        # a repair that erases the caption is no repair
        return {"top_caption": [text or caption for text, caption in zip(repaired, raw, strict=True)]}

    return on_ok_rows(repair, WRITES)


def _keep_raw(rows: dict[str, list]) -> dict[str, list]:
    """Repair off: the chosen caption is final."""
    return {"top_caption": list(rows["top_caption_raw"])}


STAGE = Stage("repair", RepairConfig, engine_loader(make_repair_fn), reads=("top_caption_raw", "status"),
              writes=WRITES, model="repairer", model_kind="transformers", role="repairer")

"""Caption stage: the captioner samples the recipe's candidate captions for every image.

The config and the batched function live here; the torch-heavy decoding is in `blip_decode` (BLIP's fast path)
and `generate_decode` (every other family), imported only when the model loads, so checking flags stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from map_fns.captioners import AUTO_PROMPT
from map_fns.flags import above, at_least, in_range
from map_fns.images import one_line
from map_fns.stage import ROW_KEY, Column, Stage, engine_loader, on_ok_rows
from map_fns.status import NO_CAPTION, OK

WRITES = (Column("_candidates"), Column("status", "string"), Column("error", "string"))


def parse_length_schedule(schedule: str) -> list[tuple[int, int]]:
    """`"8:20,16:30,16:45"` -> `[(8, 20), (16, 30), (16, 45)]` as (candidates, max new tokens)."""
    groups = []
    for part in schedule.split(","):
        count, _, max_len = part.strip().partition(":")
        if not (count.isdigit() and max_len.isdigit()) or int(count) < 1 or int(max_len) < 1:
            raise ValueError(f"--length_schedule must look like '8:20,16:30,16:45', got {schedule!r}")
        groups.append((int(count), int(max_len)))
    return groups


def candidate_max_lengths(schedule: list[tuple[int, int]], num_candidates: int) -> list[int]:
    """One max length per candidate, the schedule's shares scaled to `num_candidates` (largest remainder)."""
    total = sum(count for count, _ in schedule)
    exact = [count * num_candidates / total for count, _ in schedule]
    counts = [int(share) for share in exact]
    by_remainder = sorted(range(len(exact)), key=lambda g: (counts[g] - exact[g], g))
    for g in by_remainder[: num_candidates - sum(counts)]:
        counts[g] += 1
    return [max_len for (_, max_len), count in zip(schedule, counts) for _ in range(count)]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"


@dataclass
class CaptionConfig:
    """The captioner and its sampling recipe; defaults are LAION-COCO's (lengths count generated tokens)."""

    captioner: str = field(
        default=DEFAULT_CAPTIONER,
        metadata={"help": "Caption model of a supported family (README: choosing a captioner): Hub id or local dir."},
    )
    caption_prompt: str = field(
        default=AUTO_PROMPT,
        metadata={"help": "Prompt (for chat models the user message), not part of the caption; auto: the family's."},
    )
    num_candidates: int = field(default=40, metadata={"help": "Captions sampled per image."})
    length_schedule: str = field(
        default="8:20,16:30,16:45",
        metadata={"help": "count:max_new_tokens groups, scaled to --num_candidates."},
    )
    min_length: int = field(default=5, metadata={"help": "EOS cannot be sampled before this many new tokens."})
    top_p: float = field(default=0.2427084604681384, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=9607, metadata={"help": "Top-k cut before the nucleus."})
    repetition_penalty: float = field(default=1.3, metadata={"help": "Penalty on tokens already present."})
    eos_stop_probability: float = field(
        default=0.17937666742679637,
        metadata={"help": "A candidate ends as soon as the model's P(EOS) exceeds this."},
    )
    seed: int = field(default=0, metadata={"help": "Run seed; each row's samples depend on (seed, row)."})

    def __post_init__(self):
        parse_length_schedule(self.length_schedule)
        at_least(self, "num_candidates", 1)
        at_least(self, "min_length", 0)
        in_range(self, "top_p", 0, 1)
        at_least(self, "top_k", 1)
        above(self, "repetition_penalty", 0)
        in_range(self, "eos_stop_probability", 0, 1)

    @property
    def max_lengths(self) -> list[int]:
        return candidate_max_lengths(parse_length_schedule(self.length_schedule), self.num_candidates)


def load_sampler(cfg: CaptionConfig, device, dtype):
    """The candidate sampler of the captioner's family: BLIP's fast path, or `generate` for every other family.

    A sampler is called with (images, row keys) and returns each image's unique candidates (or the ValueError of
    a processor that refused the image), and says how much working memory one image needs (`bytes_per_image`),
    for sizing sub-batches to free memory.
    """
    from transformers import AutoConfig

    from map_fns.captioners import BLIP, family_of

    family = family_of(AutoConfig.from_pretrained(cfg.captioner).model_type)
    if family is BLIP:
        from map_fns.blip_decode import BlipSampler

        return BlipSampler(cfg, device, dtype)
    from map_fns.generate_decode import GenericSampler

    return GenericSampler(cfg, family, device, dtype)


def no_caption_reason(candidates: list[str] | ValueError) -> str | None:
    """Why a row gets no caption: its sampler's candidates were all empty, or the captioner's processor refused its
    image (which a sampler returns, so that the row fails alone); None when it has candidates."""
    if isinstance(candidates, ValueError):
        return f"the captioner's processor refused the image: {one_line(candidates)}"
    return None if candidates else "every sampled candidate was empty"


def make_caption_fn(cfg: CaptionConfig, device="cpu", *, precision: str = "auto",
                    model_batch_size: int = 0) -> Callable[[dict], dict]:
    """Load the captioner once; the returned batched function adds `_candidates` (internal) to every ok row, and
    makes a row whose candidates were all empty `no_caption`.

    Images go through the model in sub-batches sized to free memory (`model_batch_size` 0) or of the given size.
    """
    import torch

    from map_fns.batching import AutoBatcher
    from map_fns.precision import resolve_dtype

    device = torch.device(device)
    sample = load_sampler(cfg, device, resolve_dtype(precision, device, "transformers"))
    batcher = AutoBatcher("caption", device, sample.bytes_per_image(), model_batch_size)

    def caption(rows: dict[str, list]) -> dict[str, list]:
        found = batcher.map(list(range(len(rows["status"]))),
                            lambda chunk: sample([rows["_image"][i] for i in chunk], [rows[ROW_KEY][i] for i in chunk]))
        error = [no_caption_reason(candidates) for candidates in found]
        return {"_candidates": [[] if isinstance(candidates, ValueError) else candidates for candidates in found],
                "status": [NO_CAPTION if reason else OK for reason in error], "error": error}

    return on_ok_rows(caption, WRITES)


STAGE = Stage("caption", CaptionConfig, engine_loader(make_caption_fn), reads=("_image", ROW_KEY, "status"),
              writes=WRITES, model="captioner", model_kind="transformers", role="captioner")

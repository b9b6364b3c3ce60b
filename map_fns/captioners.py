"""Which captioner families the caption stage runs, and how each is prompted.

A family is a set of transformers `model_type`s (the `model_type` of a checkpoint's config.json) that load with
transformers' Auto classes and caption alike. BLIP runs on its own fast path (`map_fns.blip_decode`); every
other family runs through `generate` with the recipe's rules as a logits processor (`map_fns.generate_decode`).
No torch here: the run checks a `--captioner` against this table before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

AUTO_PROMPT = "auto"  # --caption_prompt's default: the family's own prompt


@dataclass(frozen=True)
class CaptionerFamily:
    """name: as the card and errors name it. model_types: config.json `model_type`s of the family (README's
    "Choosing a captioner" names a checkpoint of each). prompt: what `--caption_prompt auto` gives it. chat: the
    prompt is a user message put through the processor's chat template (instruction models); otherwise it is text
    the processor takes as is, after the image (or the decoder's prefix, for BLIP and GIT). prefill_once: the image
    is placeholder tokens of a causal prompt, which can run once per image and be shared by its candidates
    (`map_fns.generate_decode`)."""

    name: str
    model_types: tuple[str, ...]
    prompt: str
    chat: bool = False
    prefill_once: bool = False


FAMILIES = (
    CaptionerFamily("BLIP", ("blip",), "a picture of "),
    CaptionerFamily("BLIP-2", ("blip-2",), ""),
    CaptionerFamily("InstructBLIP", ("instructblip",), "A short image caption:"),
    CaptionerFamily("GIT", ("git",), ""),
    CaptionerFamily("Florence-2", ("florence2",), "<CAPTION>"),
    CaptionerFamily("PaliGemma", ("paligemma",), "caption en"),
    CaptionerFamily("Qwen2-VL", ("qwen2_vl", "qwen2_5_vl"),
                    "Describe this image in one sentence.", chat=True, prefill_once=True),
    CaptionerFamily("SmolVLM", ("smolvlm", "idefics3"),
                    "Describe this image in one sentence.", chat=True, prefill_once=True),
    CaptionerFamily("LLaVA", ("llava", "llava_next", "llava_onevision"),
                    "Describe this image in one sentence.", chat=True, prefill_once=True),
)
BLIP = FAMILIES[0]


def supported() -> str:
    """The supported families for an error message: 'BLIP (blip), BLIP-2 (blip-2), ...'."""
    return ", ".join(f"{family.name} ({'/'.join(family.model_types)})" for family in FAMILIES)


def family_of(model_type: str | None) -> CaptionerFamily:
    """The family of a checkpoint whose config.json says `model_type`; ValueError naming it and the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(f"is a {model_type or 'untyped'} model, which is not a supported captioner family "
                     f"(supported: {supported()})")


def prompt_for(family: CaptionerFamily, caption_prompt: str) -> str:
    """The prompt a run uses: `--caption_prompt` as given, or the family's own for `auto`."""
    return family.prompt if caption_prompt == AUTO_PROMPT else caption_prompt


def checkpoint_model_type(spec: str) -> str | None:
    """The `model_type` in the config.json of a local folder or of a Hub checkpoint in the local cache; None when
    neither has it. For the card, which describes a run after its models were loaded (so the file is there)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    path = Path(spec).expanduser() / "config.json"
    if not path.is_file():
        try:
            cached = try_to_load_from_cache(spec, "config.json")
        except HFValidationError:
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    return json.loads(path.read_text()).get("model_type")

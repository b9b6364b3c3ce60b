"""Which number format each model computes in.

Precision changes captions: sampling turns small logit differences into different tokens, and one different
token makes a different candidate (bench/precision.py measures how often). So `auto`, the default, runs each
model as LAION did on GPUs: BLIP and T5 in fp32 with TF32 matmuls (the reference pinned torch 1.11, which
allowed TF32 by default on Ampere and newer GPUs; 1.12 turned it off), CLIP in fp16 (what `clip.load` gives on a
GPU; open_clip's fp16 keeps LayerNorms in fp32, as OpenAI's CLIP ran). CPUs run fp32. `fp32` is strict fp32 (no
TF32 anywhere); `bf16` / `fp16` put every model in half precision: faster and lighter, not the recipe's numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MODEL_KINDS = ("transformers", "open_clip")  # as `Stage.model_kind`


def check_precision(precision: str) -> None:
    """Raise one line naming the bad value; cheap (no torch), for flag checking."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_dtype(precision: str, device: str | torch.device, model_kind: str) -> torch.dtype:
    """The torch dtype a model of `model_kind` ("transformers": BLIP, T5; "open_clip": the rankers) computes in
    for `precision` on `device`; `auto` is the reference's: fp16 for CLIP on CUDA, fp32 for everything else."""
    import torch

    check_precision(precision)
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind must be one of {', '.join(MODEL_KINDS)}, got {model_kind!r}")
    if precision == "auto":
        on_gpu = torch.device(device).type == "cuda"
        return torch.float16 if on_gpu and model_kind == "open_clip" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_tf32(precision: str) -> None:
    """Whether fp32 matmuls and convolutions may use TF32 on GPUs (no effect on CPUs): `auto` yes (torch 1.11's
    defaults, what the reference ran), `fp32` never; half precisions keep torch's defaults. Process-wide, as torch
    has it: every model stage's loader (`map_fns.stage.engine_loader`) sets it from the same flag."""
    import torch

    check_precision(precision)
    if precision in ("auto", "fp32"):
        torch.backends.cuda.matmul.allow_tf32 = precision == "auto"
        torch.backends.cudnn.allow_tf32 = precision == "auto"


def open_clip_precision(dtype: torch.dtype) -> str:
    """open_clip's own name for `dtype`: its `bf16`/`fp16` keep LayerNorms in fp32, as OpenAI's CLIP ran."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

"""Which number format the model stages compute in.

Half precision doubles tensor-core throughput and halves memory on a GPU; on a CPU it is slower and less
exact, so `auto` keeps fp32 there. bf16 is preferred over fp16 (same range as fp32, no overflow in
attention logits); GPUs without bf16 (before Ampere) get fp16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(precision: str) -> None:
    """Raise one line naming the bad value; cheap (no torch), for flag checking."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype for `precision` on `device`; `auto` is bf16 (else fp16) on CUDA and fp32 elsewhere."""
    import torch

    check_precision(precision)
    if precision == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def open_clip_precision(dtype: torch.dtype) -> str:
    """open_clip's own name for `dtype`: its `bf16`/`fp16` keep LayerNorms in fp32, as OpenAI's CLIP ran."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

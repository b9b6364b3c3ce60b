"""Tiny random heads in the default heads' published layouts, built offline for `--preset tiny` and the tests.

Same keys, same computation, same file format (a state dict saved with torch.save) as the real files, loaded by
the same `map_fns.embedding_heads.load_head`; only the hidden layers are narrower, which the loader reads from
the shapes. Seeded, so every build is the same head; initialised so that its outputs spread over inputs (a
threshold can put rows on both sides of it), although they mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from map_fns.embedding_heads import LAYOUTS, state_key

SEED = 0
HIDDEN_WIDTH = 16  # every hidden layer; the real ones are 64-512 (NSFW) and 16-1024 (aesthetic) wide
AESTHETIC_MIDDLE = 5.0  # the tiny aesthetic head's scores centre here, mid-way on the real head's 1-10 scale


def tiny_head_file(kind: str) -> str:
    """The file name `build_tiny_head` gives a `kind` head."""
    return f"tiny-{kind}-head.pth"


def build_tiny_head(kind: str, input_dim: int, folder: str | Path) -> str:
    """Write a tiny `kind` head taking `input_dim`-wide embeddings into `folder`; return its spec (a path)."""
    import torch

    layout = LAYOUTS[kind][0]
    generator = torch.Generator().manual_seed(SEED)
    state = {}
    if layout.standardize:  # statistics of unit vectors, whose coordinates are about input_dim ** -0.5
        mean = torch.randn(input_dim, generator=generator) * input_dim ** -0.5 / 2
        variance = (torch.rand(input_dim, generator=generator) + 0.5) / input_dim
        state[state_key(layout.standardize, "mean")], state[state_key(layout.standardize, "variance")] = mean, variance
    widths = [input_dim] + [HIDDEN_WIDTH] * (len(layout.linears) - 1) + [1]
    for i, prefix in enumerate(layout.linears):
        # Weights that keep the outputs' size about 1 (so they spread, not crowd around one value): a unit-length
        # input (the bare normalised embedding) takes unit variance, one whose coordinates are about 1 takes
        # 1 / fan_in, doubled after a ReLU, which zeroes half of them.
        if i == 0:
            std = 1.0 if not layout.standardize else widths[i] ** -0.5
        else:
            std = ((2 if layout.relu else 1) / widths[i]) ** 0.5
        state[state_key(prefix, "weight")] = torch.randn(widths[i + 1], widths[i], generator=generator) * std
        state[state_key(prefix, "bias")] = torch.randn(widths[i + 1], generator=generator) * 0.1
    if kind == "aesthetic":
        state[state_key(layout.linears[-1], "bias")] += AESTHETIC_MIDDLE
    path = Path(folder).resolve() / tiny_head_file(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return str(path)

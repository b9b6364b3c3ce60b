"""The reference's CLIP ranking: `clip_rank` and `cos_sim` of `docker/sampling.py`, and the two-stage choice of
`docker/c_h2.py` (`make_caption`, mode "CLIP-ViT-L+RN50x64": the 5 best by the first CLIP, the best of those
by the second).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class ReferenceClip:
    """An open_clip model with its own preprocessing and tokenizer, used as `clip_rank` used OpenAI's `clip`.

    `spec` is what open_clip's factory takes whole (`local-dir:/path`, `hf-hub:org/repo`).
    """

    def __init__(self, spec: str):
        import open_clip

        self.model, self.preprocess = open_clip.create_model_from_pretrained(spec)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec)

    @torch.inference_mode()
    def similarities(self, image, captions: list[str]) -> list[float]:
        """`clip_rank`: the image encoded once, each caption encoded alone, cosine of the two embeddings."""
        image_features = self.model.encode_image(self.preprocess(image).unsqueeze(0))
        return [cosine(self.model.encode_text(self.tokenizer([caption])), image_features) for caption in captions]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """`cos_sim` with `normalize=True` for one pair: each embedding divided by its L2 norm, then the dot product."""
    a = a / torch.norm(a, dim=-1, keepdim=True)
    b = b / torch.norm(b, dim=-1, keepdim=True)
    return (a @ b.T).item()


@dataclass(frozen=True)
class Choice:
    shortlist: list[str]  # the first CLIP's best, best first
    similarities: list[float]  # their first-stage similarities
    rerank_similarities: list[float]  # the second CLIP's, same order
    chosen: str


def choose(first: ReferenceClip, second: ReferenceClip, image, captions: list[str], keep: int = 5) -> Choice:
    """`make_caption`'s ranking: `argsort(sims)[-keep:][::-1]` of the first CLIP, then `argmax` of the second."""
    sims = first.similarities(image, captions)
    top = np.argsort(np.asarray(sims))[-keep:][::-1]
    shortlist = [captions[i] for i in top]
    rerank = second.similarities(image, shortlist)
    return Choice(shortlist, [sims[i] for i in top], rerank, shortlist[int(np.argmax(np.asarray(rerank)))])

"""CLIP image-caption similarity, shared by the rank and rerank stages.

Both stages ask the same question of a different CLIP model: how close is each caption to its image?
Scores are plain cosine similarities of L2-normalised embeddings with no prompt template, as in LAION-COCO.
Speed never changes a score: many images and all their captions go through one forward (as many as fit in
free memory), text stops at the batch's last caption end instead of 77 tokens, images are preprocessed in
worker threads, and half precision is open_clip's own (LayerNorms stay fp32, as OpenAI's CLIP ran).
torch and open_clip load only with a model, so checking a run's flags stays cheap.
"""

from __future__ import annotations

import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from map_fns.flags import parse_clip_spec

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

RECIPE_CAPTIONS_PER_IMAGE = 40  # BLIP candidates the ranker scores per image; the reranker sees 5
PREPROCESS_THREADS = min(8, os.cpu_count() or 1)  # resizing releases the GIL; a few threads keep up with a GPU
_UNKNOWN_TOWER = (257, 1024, 16)  # (tokens, width, heads) of ViT-L/14's image tower, the recipe's ranker


def needs_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether a pretrained tag was trained with QuickGELU (all OpenAI CLIPs).

    open_clip only warns when such a tag meets a built-in config with plain GELU (e.g. ViT-L-14/openai),
    and the weights would then run through the wrong activation. Schema specs carry their own config.
    """
    import open_clip

    return bool(pretrained and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu"))


def _trims_exactly(model) -> bool:
    """Whether text can stop at the batch's last end-of-text token without changing `encode_text`.

    True for open_clip's `CLIP` (all OpenAI models, ViT and ModifiedResNet) with a causal text tower that pools
    at the end-of-text token (`argmax`): every position sees only earlier ones and only that one is read.
    """
    import open_clip

    return isinstance(model, open_clip.CLIP) and model.attn_mask is not None and model.text_pool_type == "argmax"


def encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, run over the first n positions only, n = the batch's last end-of-text + 1.

    open_clip pads every caption to 77 tokens although a BLIP caption needs about 15, and its `encode_text`
    always adds all 77 positional embeddings and the 77x77 causal mask. For models where cutting is exact
    (`_trims_exactly`) this repeats `CLIP.encode_text` step by step with both cut to n; others get
    `encode_text` on the full tokens. Pass `tokens` on the CPU: n is read there, so the device is never waited
    on, and only the n columns are moved to the model's device.
    """
    import torch
    from open_clip.transformer import text_global_pool

    device = next(model.parameters()).device
    if not _trims_exactly(model):
        return model.encode_text(tokens.to(device))
    n = int(tokens.argmax(dim=-1).max()) + 1  # end-of-text has the largest id
    tokens = tokens[:, :n].to(device)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _block_elements(tokens: int, width: int, heads: int) -> int:
    """Activations of one transformer block over `tokens`: its MLP's hidden layer (4x wide) and attention scores."""
    return tokens * (4 * width + heads * tokens)


def _transformer_shape(transformer) -> tuple[int, int]:
    """(width, heads) of an open_clip transformer; ViT-L/14's for a tower of another library."""
    try:
        return transformer.width, transformer.resblocks[0].attn.num_heads
    except AttributeError:
        return _UNKNOWN_TOWER[1:]


def _image_elements(visual) -> int:
    """Peak activations of one image in the vision tower, counted as `bytes_per_image` explains."""
    conv1 = getattr(visual, "conv1", None)
    if conv1 is None:  # a timm or Hugging Face tower
        return 2 * _block_elements(*_UNKNOWN_TOWER)
    size = visual.image_size
    height, width = size if isinstance(size, (tuple, list)) else (size, size)
    positions = (height // conv1.stride[0]) * (width // conv1.stride[1])
    if not hasattr(visual, "transformer"):  # ModifiedResNet: 3 stem convolutions at conv1's resolution
        return 4 * positions * conv1.out_channels
    return 2 * _block_elements(positions + 1, *_transformer_shape(visual.transformer))


def bytes_per_image(model, dtype: torch.dtype, captions: int = RECIPE_CAPTIONS_PER_IMAGE) -> int:
    """Rough working memory of one image and its captions in one `ClipScorer` forward, to size batches.

    Inference frees a layer's activations once the next layer has run, so the widest layer counts, not the
    depth: twice (a layer's input and output) one transformer block, for the image's patch tokens and for each
    caption at the full context. A ResNet tower counts as its stem, whose three convolutions at the first one's
    resolution hold about four times its output. `captions` defaults to the recipe's 40 candidates: for the
    reranker's 5 this overestimates, which only costs batch size; an underestimate is caught by the batcher
    halving on out-of-memory.
    """
    context = getattr(model, "context_length", 77)
    text = 2 * captions * _block_elements(context, *_transformer_shape(getattr(model, "transformer", None)))
    return (_image_elements(model.visual) + text) * dtype.itemsize


def _split_rows(flat: list, counts: list[int]) -> list[list]:
    """`flat` cut into consecutive rows of `counts` items."""
    rows, start = [], 0
    for n in counts:
        rows.append(flat[start : start + n])
        start += n
    return rows


@dataclass(frozen=True)
class ImageEmbedding:
    """An image's CLIP embedding as `encode_image` gave it (float32, CPU), and the spec of the model that did."""

    model: str
    vector: torch.Tensor


_shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shared_scorer(spec: str, device: str | torch.device, *, dtype: torch.dtype | None = None,
                  model_batch_size: int = 0) -> ClipScorer:
    """The process's `ClipScorer` of these settings, loaded on first use and kept while any stage holds it: the
    screen stage and the ranker share one ViT-L/14, and its image embeddings."""
    key = (spec, str(device), dtype, model_batch_size)
    scorer = _shared.get(key)
    if scorer is None:
        scorer = _shared[key] = ClipScorer(spec, device, dtype=dtype, model_batch_size=model_batch_size)
    return scorer


class ClipScorer:
    """One open_clip model and its tokenizer, loaded once, with trained weights or not at all.

    `dtype` (default fp32) goes to open_clip's own precision handling; `model_batch_size` fixes how many images
    (with all their captions) share a forward, 0 sizes that to free memory (`map_fns.batching.AutoBatcher`).
    """

    def __init__(self, spec: str, device: str | torch.device, *, dtype: torch.dtype | None = None,
                 model_batch_size: int = 0):
        import open_clip
        import torch

        from map_fns.batching import AutoBatcher
        from map_fns.precision import open_clip_precision

        name, pretrained = parse_clip_spec(spec)
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        logger.info("loading CLIP %s on %s in %s", spec, self.device, self.dtype)
        # create_model_from_pretrained is create_model_and_transforms' eval half with require_pretrained=True:
        # it raises instead of silently falling back to random weights.
        self.model, self.preprocess = open_clip.create_model_from_pretrained(
            name, pretrained=pretrained, precision=open_clip_precision(self.dtype), device=self.device,
            force_quick_gelu=needs_quick_gelu(name, pretrained),
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.batcher = AutoBatcher(f"CLIP {spec}", self.device, bytes_per_image(self.model, self.dtype),
                                   model_batch_size)
        self._pool = ThreadPoolExecutor(PREPROCESS_THREADS, thread_name_prefix="clip-preprocess")
        weakref.finalize(self, self._pool.shutdown, wait=False)

    @property
    def embedding_width(self) -> int:
        """How many numbers an image embedding has (ViT-L/14: 768)."""
        return self.model.visual.output_dim

    def image_embeddings(self, images: list[Image.Image]) -> list[ImageEmbedding]:
        """Each image's embedding (`encode_image`, not normalised) on the CPU, tagged with this model's spec so
        that `similarities` may take it instead of running the image tower again."""
        import torch

        pixels = [self._pool.submit(self.preprocess, image) for image in images]
        with torch.inference_mode():
            encoded = self.batcher.map(list(range(len(images))), lambda chunk: list(self.model.encode_image(
                torch.stack([pixels[i].result() for i in chunk]).to(self.device, self.dtype)).float().cpu()))
        return [ImageEmbedding(self.spec, vector) for vector in encoded]

    def similarities(self, images: list[Image.Image], captions: list[list[str]],
                     embeddings: list[ImageEmbedding | None] | None = None) -> list[list[float]]:
        """Cosine similarity of each caption in `captions[i]` to `images[i]`, in the captions' order.

        An image whose `embeddings[i]` this model made (`image_embeddings`) is not run through the image tower
        again. Every other image starts preprocessing in the pool at once, so later sub-batches find their
        pixels ready while the model works on earlier ones. Rows without captions cost nothing.
        """
        import torch

        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
        rows = [i for i, row in enumerate(captions) if row]
        mine = [embedding if embedding and embedding.model == self.spec else None for embedding in embeddings] \
            if embeddings else [None] * len(images)
        known = {i: mine[i].vector for i in rows if mine[i]}
        pixels = {i: self._pool.submit(self.preprocess, images[i]) for i in rows if i not in known}
        with torch.inference_mode():
            scored = self.batcher.map(rows, lambda chunk: self._score(
                [known[i] if i in known else pixels[i].result() for i in chunk], [captions[i] for i in chunk]))
        out: list[list[float]] = [[] for _ in captions]
        for i, row_scores in zip(rows, scored):
            out[i] = row_scores
        return out

    def _score(self, images: list[torch.Tensor], captions: list[list[str]]) -> list[list[float]]:
        """One forward of these images (preprocessed pixels, or embeddings already made: 1-d) and all their
        captions; float64 cosines, rows as given."""
        import torch

        counts = [len(row) for row in captions]
        tokens = self.tokenizer([caption for row in captions for caption in row])
        owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(self.device)
        embedded = [i for i, image in enumerate(images) if image.dim() == 1]
        encoded = torch.empty(len(images), 0)
        if len(embedded) < len(images):
            pixels = torch.stack([image for image in images if image.dim() != 1]).to(self.device, self.dtype)
            encoded = self.model.encode_image(pixels).double()
        by_row = iter(encoded)
        image_emb = torch.stack([images[i].to(self.device).double() if i in embedded else next(by_row)
                                 for i in range(len(images))])
        image_emb = torch.nn.functional.normalize(image_emb, dim=-1)
        text_emb = torch.nn.functional.normalize(encode_text_trimmed(self.model, tokens).double(), dim=-1)
        return _split_rows((text_emb * image_emb[owner]).sum(dim=-1).cpu().tolist(), counts)

"""What each precision does to the captions: every `--precision` against fp32, on a captioner whose logits are
peaked like a trained model's (the plain tiny BLIP's are nearly flat, so precision could hardly flip a token).

    python bench/precision.py [--variants 4] [--cache_dir DIR]

The product's own stage functions (caption, rank, rerank, repair) run on the bundled sample's photographs
(decoded by the fetch stage's code, plus flipped and rotated copies) once per configuration, on the CPU, with
the peaked tiny BLIP (`builder.tiny_models.build_peaked_captioner`) and the tiny CLIPs and T5:

- `fp32`: the baseline, and what `--precision fp32` (and `auto` on a CPU) runs;
- `auto on a GPU`: what `auto` picks on CUDA: BLIP and T5 in fp32 with TF32 matmuls, both CLIPs in fp16. CPUs
  have no TF32: the inputs of every fp32 matmul, convolution and attention are rounded to TF32's 10-bit
  mantissa (accumulation stays fp32), an emulation of its rounding, not a GPU run;
- `CLIP fp16 only`: BLIP and T5 in strict fp32, both CLIPs in fp16 (what `auto` would be without TF32);
- `bf16`, `fp16`: every model in that format.

Per configuration: the share of images whose chosen caption (`top_caption_raw`) and whose whole candidate list
equal fp32's, the share of fp32's candidates it samples too, the mean words per candidate and per chosen
caption, and the first ranker's similarity of the chosen caption (mean, 10th and 90th percentile). Tiny models
show how sensitive the recipe is to rounding, not the size of the effect on BLIP-large: run
`bench/gpu_check.sh` on a GPU for the real models.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REFERENCE = {"caption": "fp32", "rank": "fp16", "rerank": "fp16", "repair": "fp32"}  # as LAION ran them
CONFIGURATIONS = {  # name -> (precision per stage, TF32 emulated)
    "fp32": ({}, False),
    "auto on a GPU": (REFERENCE, True),
    "CLIP fp16 only": (REFERENCE, False),
    "bf16": ({"caption": "bf16", "rank": "bf16", "rerank": "bf16", "repair": "bf16"}, False),
    "fp16": ({"caption": "fp16", "rank": "fp16", "rerank": "fp16", "repair": "fp16"}, False),
}


def sample_photographs(variants: int) -> tuple[list, list[str]]:
    """The bundled sample's photographs as the fetch stage decodes them, each also flipped and rotated
    (`variants` versions of each), with row keys."""
    import pyarrow.parquet as pq
    from PIL import Image

    from builder.source import bundled_sample
    from map_fns.fetch import FetchConfig
    from map_fns.images import decode_image

    cfg = FetchConfig()
    transforms = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90, Image.Transpose.FLIP_TOP_BOTTOM]
    images, keys = [], []
    cells = pq.read_table(bundled_sample(), columns=["image"])["image"].to_pylist()
    for i, cell in enumerate(cells):
        photo = decode_image(cell["bytes"], cfg.max_image_pixels, cfg.resize_min_side or None)
        for v, transform in enumerate(transforms[:variants]):
            images.append(photo if transform is None else photo.transpose(transform))
            keys.append(f"sample-{i}-{v}")
    return images, keys


def tf32_emulation():
    """A torch function mode rounding the fp32 inputs of matmuls, convolutions and attention to TF32."""
    import torch
    from torch.overrides import TorchFunctionMode

    rounded = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm,
               torch.baddbmm, torch.addmm, torch.mm, torch.nn.functional.conv2d,
               torch.nn.functional.scaled_dot_product_attention, torch.einsum}

    def to_tf32(x):
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32):
            return x
        bits = x.contiguous().view(torch.int32)
        return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # round to nearest, 10 mantissa bits kept

    class TF32(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in rounded:
                args = tuple(to_tf32(a) for a in args)
                kwargs = {k: to_tf32(v) for k, v in kwargs.items()}
            return func(*args, **kwargs)

    return TF32()


def run_configuration(configs: dict, precisions: dict, tf32: bool, images: list, keys: list[str],
                      batch_size: int) -> dict[str, list]:
    """The model stages loaded with these precisions, over every image; the batch's columns."""
    import torch

    from bench.recipe import model_stages, new_batch
    from map_fns.stage import StageContext

    stages = {stage.name: stage.load(configs[stage.name], StageContext("cpu", precisions.get(stage.name, "fp32")))
              for stage in model_stages()}
    out: dict[str, list] = {}
    with torch.inference_mode(), tf32_emulation() if tf32 else nullcontext():
        for start in range(0, len(images), batch_size):
            batch = new_batch(images[start : start + batch_size], keys[start : start + batch_size])
            for fn in stages.values():
                batch.update(fn(batch))
            for name in ("_candidates", "top_caption_raw", "all_similarities", "status"):
                out.setdefault(name, []).extend(batch[name])
    return out


def compare(base: dict, other: dict) -> dict:
    """`other`'s figures, and how much of it equals `base`'s."""
    n = len(base["status"])
    same_candidates = sum(a == b for a, b in zip(base["_candidates"], other["_candidates"]))
    shared = sum(len(set(a or ()) & set(b or ())) for a, b in zip(base["_candidates"], other["_candidates"]))
    total = sum(len(a or ()) for a in base["_candidates"])
    candidates = [c for row in other["_candidates"] if row for c in row]
    chosen = [c for c in other["top_caption_raw"] if c]
    similarity = [sims[0] for sims in other["all_similarities"] if sims]
    deciles = statistics.quantiles(similarity, n=10) if len(similarity) > 1 else [float("nan")] * 9
    return {
        "chosen = fp32": sum(a == b for a, b in zip(base["top_caption_raw"], other["top_caption_raw"])) / n,
        "candidates = fp32": same_candidates / n,
        "fp32's candidates sampled": shared / total if total else float("nan"),
        "words/candidate": statistics.fmean(len(c.split()) for c in candidates) if candidates else float("nan"),
        "words/chosen": statistics.fmean(len(c.split()) for c in chosen) if chosen else float("nan"),
        "chosen sim mean": statistics.fmean(similarity) if similarity else float("nan"),
        "sim p10": deciles[0],
        "sim p90": deciles[-1],
    }


def print_table(rows: dict[str, dict]) -> None:
    header = ["configuration", *next(iter(rows.values()))]
    body = [[name, *(f"{v:.1%}" if k.startswith(("chosen =", "candidates =", "fp32's")) else f"{v:.3f}"
                     if "sim" in k else f"{v:.2f}" for k, v in figures.items())] for name, figures in rows.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in body:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=4, choices=range(1, 5),
                        help="versions of each of the 16 sample photographs (flips, rotation)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--cache_dir", type=Path, default=Path(tempfile.gettempdir()) / "laion-coco-bench-precision")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as transformers_logging

    from builder.tiny_models import build_peaked_captioner, build_tiny_models
    from map_fns.registry import STAGES

    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per model load
    paths = build_tiny_models(args.cache_dir)
    captioner = build_peaked_captioner(args.cache_dir / "peaked-captioner")
    models = {"captioner": captioner, "ranker": paths.ranker, "reranker": paths.reranker, "repairer": paths.repairer}
    configs = {stage.name: stage.config(**{stage.model: models[stage.model]}) for stage in STAGES if stage.model}
    images, keys = sample_photographs(args.variants)
    print(f"{len(images)} images (the sample's photographs{', flipped and rotated' if args.variants > 1 else ''}), "
          f"peaked tiny BLIP {captioner}, CPU, torch {torch.__version__}\n")
    results = {name: run_configuration(configs, precisions, tf32, images, keys, args.batch_size)
               for name, (precisions, tf32) in CONFIGURATIONS.items()}
    print_table({name: compare(results["fp32"], result) for name, result in results.items()})


if __name__ == "__main__":
    main()

"""How far each model's input is from what its own processor makes of the full image, before and after.

    python bench/model_inputs.py [--large 3000] [--grain 8] [--min_side N] [--repeats 5]

The fetch stage decodes a big image small and every model's processor resizes it again. For each image this
compares each processor's output on the fetch stage's decode with the same processor's output on the full-size
decode (absolute difference in the processors' normalised units: one 8-bit level is about 0.015):

- BEFORE: the decode until issue 17, reproduced here for the RGB images this feeds it: libjpeg's DCT scaling to
  448 px, the longer side rounded to nearest, the whole drafted image resized bilinear.
- AFTER: `map_fns.images.decode_for_models` at `--min_side` (default: `FetchConfig`'s `--resize_min_side`).

Models: BLIP-large's image processor (384x384) and open_clip's eval transforms of ViT-L-14 (224), ViT-L-14-336
(336) and RN50x64 (448), built from their configs without weights, as tests/map_fns/test_model_inputs.py does.
Images: the 16 sample photographs (at most 512 px); each resized (bicubic) to `--large` px on its longer side and
saved as JPEG q90; and the same with pixel grain (Gaussian, `--grain` levels), detail at the pixel level that a
second resize smooths differently. Then the cost: decode time before and after on big JPEGs and PNGs, and the
time the recipe's three processors (BLIP, ViT-L/14, RN50x64; one CPU thread) take on what the decode gives them.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from map_fns.fetch import FetchConfig  # noqa: E402
from map_fns.images import decode_for_models  # noqa: E402
from tests.map_fns.test_model_inputs import (  # noqa: E402
    BLIP_LARGE, CLIP_MODELS, encoded, photo, photographs, reference_transform,
)

LIMIT = 10**9
OLD_MIN_SIDE = 448
RECIPE_MODELS = ("BLIP 384", "ViT-L-14", "RN50x64")


def processors() -> dict:
    """model -> its processor, from a PIL image to a (3, H, W) tensor."""
    found = {"BLIP 384": lambda img: BLIP_LARGE(img, return_tensors="pt").pixel_values[0]}
    found.update({name: reference_transform(name) for name in CLIP_MODELS})
    return found


def old_decode(data: bytes) -> Image.Image:
    """The fetch stage's decode before issue 17, for an RGB image without EXIF orientation or transparency."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if min(width, height) <= OLD_MIN_SIDE:
        return img.convert("RGB")
    scale = OLD_MIN_SIDE / min(width, height)
    target = (max(OLD_MIN_SIDE, round(width * scale)), max(OLD_MIN_SIDE, round(height * scale)))
    img.draft("RGB", target)
    return img.convert("RGB").resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def new_decode(min_side: int):
    return lambda data: decode_for_models(data, LIMIT, min_side).image


def grained(img: Image.Image, levels: float, seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).normal(0, levels, (img.height, img.width, 1))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def larger(index: int, longer: int) -> Image.Image:
    """Sample photograph `index` resized to `longer` px on its longer side."""
    width, height = Image.open(io.BytesIO(photographs()[index])).size
    scale = longer / max(width, height)
    return photo(index, (round(width * scale), round(height * scale)))


def image_sets(longer: int, grain: float) -> dict[str, list[bytes]]:
    count = len(photographs())
    return {
        f"sample photographs ({count}, <= 512 px)": photographs(),
        f"the same at {longer} px, JPEG": [encoded(larger(i, longer), "JPEG") for i in range(count)],
        f"the same + grain {grain:g}": [encoded(grained(larger(i, longer), grain, i), "JPEG") for i in range(count)],
    }


def fidelity(images: list[bytes], decodes: dict, models: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(decode, model) -> (mean over images of the mean absolute difference, max over images of the max)."""
    diffs: dict[tuple[str, str], list[torch.Tensor]] = {}
    for data in images:
        full = decode_for_models(data, LIMIT).image
        small = {label: decode(data) for label, decode in decodes.items()}
        for model, process in models.items():
            reference = process(full)
            for label, img in small.items():
                diffs.setdefault((label, model), []).append((process(img) - reference).abs())
    return {key: (statistics.fmean(d.mean().item() for d in found), max(d.max().item() for d in found))
            for key, found in diffs.items()}


def cost_files(seed: int = 0) -> dict[str, bytes]:
    """Big files of each kind the decode treats apart: baseline and progressive JPEG sizes around 2x the default
    min side, a camera-sized one, and PNGs (no DCT scaling)."""
    files = {}
    for size, fmt, options in [((2000, 1500), "JPEG", {}), ((4000, 3000), "JPEG", {}),
                               ((4000, 3000), "JPEG", {"progressive": True}), ((6000, 4000), "JPEG", {}),
                               ((3000, 2000), "PNG", {}), ((4000, 3000), "PNG", {})]:
        img = grained(photo(seed, size), 4, seed)
        label = f"{fmt}{' progressive' if options else ''} {size[0]}x{size[1]}"
        files[label] = encoded(img, fmt, **options)
    return files


def median_ms(fn, repeats: int) -> float:
    fn()  # warm caches and codecs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=3000, help="longer side of the large versions, px")
    parser.add_argument("--grain", type=float, default=8, help="pixel grain of the third set, in 8-bit levels")
    parser.add_argument("--min_side", type=int, default=FetchConfig().resize_min_side, help="AFTER's min side")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes per file (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = processors()
    decodes = {"before": old_decode, "after": new_decode(args.min_side)}

    print(f"Model inputs vs each processor on the full image: mean / max absolute difference, normalised units\n"
          f"before: 448 px bilinear (the old decode); after: {args.min_side} px (decode_for_models)\n")
    print("| images | model | before mean | before max | after mean | after max |\n|---|---|---|---|---|---|")
    for name, images in image_sets(args.large, args.grain).items():
        found = fidelity(images, decodes, models)
        for model in models:
            (b_mean, b_max), (a_mean, a_max) = found["before", model], found["after", model]
            print(f"| {name} | {model} | {b_mean:.4f} | {b_max:.3f} | {a_mean:.4f} | {a_max:.3f} |", flush=True)

    recipe = {name: models[name] for name in RECIPE_MODELS}
    print(f"\nCost per image, ms (median of {args.repeats}; one thread): the decode, then the recipe's three processors "
          f"({', '.join(RECIPE_MODELS)}) on its result\n")
    print("| file | KiB | decode before | decode after | processors before | processors after | size after |\n"
          "|---|---|---|---|---|---|---|")
    for label, data in cost_files().items():
        row = [f"{label}", f"{len(data) / 1024:.0f}"]
        results = {name: decode(data) for name, decode in decodes.items()}
        row += [f"{median_ms(lambda d=decode: d(data), args.repeats):.0f}" for decode in decodes.values()]
        row += [f"{median_ms(lambda img=img: [p(img) for p in recipe.values()], args.repeats):.0f}"
                for img in results.values()]
        row.append("x".join(map(str, results["after"].size)))
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

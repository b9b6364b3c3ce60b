"""Each model sees what its own processor makes of the original image.

The fetch stage decodes a big image small (JPEG DCT scaling, then a bicubic resize to `--resize_min_side`), and
each model's processor resizes again. Here the product's path (the fetch stage's decode at the default min side,
then the caption stage's `pixel_values` and `ClipScorer.preprocess`) is held against the same processors applied
to the full-size decode (upright, alpha on white), in the processors' normalised units: one 8-bit level is about
0.015, so a mean of 0.002 is one value in seven a level off.
"""

import functools
import io
import json
from collections.abc import Callable

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import BlipImageProcessor

from builder.source import bundled_sample
from map_fns.blip_decode import pixel_values
from map_fns.clip_score import ClipScorer
from map_fns.fetch import FetchConfig
from map_fns.images import decode_for_models

LIMIT = 10**9
MIN_SIDE = FetchConfig().resize_min_side
# Per model and image, in normalised units, as measured on the cases below: at most 0.0025 mean where the image is
# decoded at full scale, 0.0042 where libjpeg's 1/2 scale lands within a few % of the target; at most 0.06 (four
# levels, at a hard transparent edge of an image just over S). Averages over many photographs: bench/model_inputs.py.
# A picture stretched or shifted by a fraction of a pixel shows 0.3-1.9 at its edges.
MEAN_TOLERANCE = 0.0045
MAX_TOLERANCE = 0.075
# Salesforce/blip-image-captioning-large's preprocessor_config.json, as the caption stage loads it.
BLIP_LARGE = BlipImageProcessor(
    do_resize=True, size={"height": 384, "width": 384}, resample=3, do_rescale=True,
    rescale_factor=0.00392156862745098, do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True,
)
CLIP_MODELS = ("ViT-L-14", "ViT-L-14-336", "RN50x64")  # 224, 336 and 448 px, all with OpenAI's weights


def reference_transform(name: str):
    """open_clip's own eval transform for `name`/openai, from its model and pretrained configs (no weights)."""
    pretrained = open_clip.get_pretrained_cfg(name, "openai")
    return open_clip.image_transform(
        open_clip.get_model_config(name)["vision_cfg"]["image_size"], is_train=False, mean=pretrained["mean"],
        std=pretrained["std"], resize_mode=pretrained["resize_mode"], interpolation=pretrained["interpolation"])


def scorer_preprocess(name: str, folder) -> Callable:
    """`ClipScorer.preprocess` for a tiny `local-dir:` model with `name`/openai's image size and preprocessing."""
    pretrained = open_clip.get_pretrained_cfg(name, "openai")
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    model_cfg = {"embed_dim": 8, "quick_gelu": True,
                 "vision_cfg": {"image_size": size, "patch_size": 112, "width": 16, "head_width": 8, "layers": 1},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    preprocess_cfg = {key: pretrained[key] for key in ("mean", "std", "interpolation", "resize_mode")}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    save_file(open_clip.CLIP(**model_cfg).state_dict(), str(folder / "open_clip_model.safetensors"))
    return ClipScorer(f"local-dir:{folder}", "cpu").preprocess


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The processors' tensors are small: one thread is faster than two waiting on each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """name -> (the product's input from an image, the model's own processor's)."""
    found = {"BLIP 384": (lambda img: pixel_values(BLIP_LARGE, [img], "cpu")[0],
                          lambda img: BLIP_LARGE(img, return_tensors="pt").pixel_values[0])}
    for name in CLIP_MODELS:
        found[name] = (scorer_preprocess(name, tmp_path_factory.mktemp(name)), reference_transform(name))
    return found


def differences(data: bytes, models: dict) -> dict[str, tuple[float, float]]:
    """model -> (mean, max) absolute difference between the product's input and the processor's on the full decode."""
    full = decode_for_models(data, LIMIT).image
    small = decode_for_models(data, LIMIT, MIN_SIDE).image
    found = {}
    for name, (product, reference) in models.items():
        ours, theirs = product(small), reference(full)
        assert ours.shape == theirs.shape, name
        diff = (ours - theirs).abs()
        found[name] = round(diff.mean().item(), 5), round(diff.max().item(), 4)
    return found


def assert_within_tolerance(found: dict[str, tuple[float, float]]):
    far = {name: d for name, d in found.items() if d[0] > MEAN_TOLERANCE or d[1] > MAX_TOLERANCE}
    assert not far, f"(mean, max) over ({MEAN_TOLERANCE}, {MAX_TOLERANCE}): {far}; all: {found}"


@functools.cache
def photographs() -> list[bytes]:
    """The sample's 16 JPEG photographs (at most 512 px)."""
    return [cell["bytes"] for cell in pq.read_table(bundled_sample(), columns=["image"]).column("image").to_pylist()]


def photo(index: int, size: tuple[int, int]) -> Image.Image:
    """Sample photograph `index` resized (bicubic) to `size`: a big photo of a real scene."""
    return Image.open(io.BytesIO(photographs()[index])).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}) | options)
    return buf.getvalue()


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def rgba(img: Image.Image) -> Image.Image:
    """`img` with an alpha ramp from transparent (left) to opaque and a fully transparent band."""
    alpha = Image.linear_gradient("L").rotate(90).resize(img.size)
    alpha.paste(0, (0, img.height // 3, img.width, img.height // 2))
    return Image.merge("RGBA", (*img.split(), alpha))


def with_transparent_index(img: Image.Image) -> Image.Image:
    """`img` in a 256-colour palette whose most used colour is transparent."""
    palette = img.quantize(256)
    palette.info["transparency"] = max(palette.getcolors())[1]
    return palette


def sixteen_bit(img: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))


# name -> its bytes. Sizes are set against the default min side S = 1344: a JPEG of at least 2S decodes at 1/2 scale,
# odd sides leave that scale's last pixel standing for half a source pixel, an image of at most S is kept as it is.
EDGE_CASES = {
    "JPEG 2689x2689 (DCT-scaled to just over S)": lambda: encoded(photo(0, (2689, 2689)), "JPEG"),
    "progressive JPEG 2845x3333 (DCT-scaled)": lambda: encoded(photo(14, (2845, 3333)), "JPEG", progressive=True),
    "greyscale JPEG 2691x2689 (DCT-scaled)": lambda: encoded(photo(6, (2691, 2689)).convert("L"), "JPEG"),
    "JPEG 2605x1801 (rounded to nearest, a pixel too long)": lambda: encoded(photo(13, (2605, 1801)), "JPEG"),
    "JPEG 1345x3001 (just over S)": lambda: encoded(photo(2, (1345, 3001)), "JPEG"),
    "JPEG 449x1333": lambda: encoded(photo(2, (449, 1333)), "JPEG"),
    "JPEG 7x5": lambda: encoded(photo(5, (7, 5)), "JPEG"),
    "PNG 1x7": lambda: encoded(photo(5, (1, 7)), "PNG"),
    "JPEG EXIF 6, stored 2001x1501": lambda: encoded(photo(4, (2001, 1501)), "JPEG", exif=exif(6)),
    "JPEG EXIF 8, stored 2701x2999 (DCT-scaled)": lambda: encoded(photo(9, (2701, 2999)), "JPEG", exif=exif(8)),
    "RGBA PNG 1601x1401": lambda: encoded(rgba(photo(10, (1601, 1401))), "PNG"),
    "palette PNG with transparency 1501x1401": lambda: encoded(with_transparent_index(photo(1, (1501, 1401))), "PNG"),
    "16-bit PNG 1601x1351": lambda: encoded(sixteen_bit(photo(12, (1601, 1351))), "PNG"),
}


@functools.cache
def edge_case(name: str) -> bytes:
    return EDGE_CASES[name]()


@pytest.mark.parametrize("index", range(16))
def test_sample_photographs_reach_each_model_as_its_processor_makes_them(models, index):
    assert_within_tolerance(differences(photographs()[index], models))


@pytest.mark.parametrize("case", EDGE_CASES)
def test_big_odd_rotated_and_transparent_images_reach_each_model_as_its_processor_makes_them(models, case):
    assert_within_tolerance(differences(edge_case(case), models))


@pytest.mark.parametrize("case", [name for name in EDGE_CASES if "DCT-scaled" in name])
def test_the_big_jpegs_here_are_decoded_at_half_scale(case):
    """What makes these cases test the DCT-scaled path: libjpeg decodes them at 1/2 for the default min side."""
    img = Image.open(io.BytesIO(edge_case(case)))
    full = img.size
    img.draft(img.mode, (MIN_SIDE, MIN_SIDE))
    assert img.size == tuple(-(-side // 2) for side in full)

import functools
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from map_fns.fetch import FetchConfig
from map_fns.images import DecodedImage, ImageDecodeError, decode_for_models, decode_image, decoded_bytes, one_line

LIMIT = 89_478_485
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)  # as in conftest's sample_images


def close(pixel, expected, tolerance=6):
    """JPEG and WebP are lossy: compare colours loosely."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def colours(img: Image.Image) -> set[tuple[int, int, int]]:
    return {colour for _, colour in img.getcolors()}


def test_every_sample_decodes_to_rgb_with_its_size(sample_images):
    for name, sample in sample_images.items():
        img = decode_image(sample.data, LIMIT)
        assert (img.mode, img.size) == ("RGB", sample.size), name


@pytest.mark.parametrize(
    "name, colour",
    [
        ("jpeg_rgb", RED),
        ("jpeg_l", (128, 128, 128)),
        ("jpeg_cmyk", RED),  # CMYK (0, 255, 255, 0) is red, not an inverted mess
        ("png_rgb", BLUE),
        ("png_l", (200, 200, 200)),
        ("png_p", GREEN),
        ("png_i16", (156, 156, 156)),  # 40000 / 256: scaled to 8 bits, not clipped to white
        ("webp", GREEN),
        ("bmp", RED),
    ],
)
def test_opaque_modes_keep_their_colour(sample_images, name, colour):
    img = decode_image(sample_images[name].data, LIMIT)
    assert close(img.getpixel((img.width // 2, img.height // 2)), colour)


def test_alpha_is_composited_on_white(sample_images):
    rgba = decode_image(sample_images["png_rgba"].data, LIMIT)
    assert rgba.getpixel((0, 0)) == WHITE  # transparent red pixel
    assert rgba.getpixel((1, 1)) == GREEN  # opaque
    assert colours(decode_image(sample_images["png_la"].data, LIMIT)) == {WHITE}  # fully transparent black


def test_palette_transparency_is_composited_on_white(sample_images):
    img = decode_image(sample_images["png_p_transparent"].data, LIMIT)
    assert img.getpixel((0, 0)) == WHITE  # palette index 0 is red but marked transparent
    assert img.getpixel((1, 1)) == BLUE


def test_exif_orientation_is_applied(sample_images):
    img = decode_image(sample_images["jpeg_exif6"].data, LIMIT)
    assert img.size == (40, 60)  # stored 60x40
    assert close(img.getpixel((img.width - 3, 3)), RED, tolerance=20)  # stored top-left is displayed top-right
    assert close(img.getpixel((3, 3)), BLUE, tolerance=20)


def test_animated_gif_gives_its_first_frame(sample_images):
    img = decode_image(sample_images["gif_animated"].data, LIMIT)
    assert colours(img) == {RED}  # frame 2 is blue


def test_result_is_detached_from_the_encoded_bytes(sample_images):
    img = decode_image(sample_images["png_rgb"].data, LIMIT)
    assert type(img) is Image.Image  # a plain loaded image, not a PngImageFile holding the file


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty body"),
        (b"<!doctype html><html></html>", "cannot identify image file"),
        (os.urandom(2048), "cannot identify image file"),
    ],
)
def test_non_images_are_rejected(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, LIMIT)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_truncated_image_is_rejected():
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buf, "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], LIMIT)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "width, height, max_pixels",
    [
        (100, 100, 9_999),  # over our own limit, far below Pillow's
        (10_000, 10_000, 10**12),  # over Pillow's global limit, where it only warns
        (20_000, 20_000, 10**12),  # over Pillow's error limit
    ],
)
def test_decompression_bombs_are_rejected_from_the_header(png_claiming, width, height, max_pixels):
    # The file is a few bytes claiming a huge size: had the pixels been loaded, this would fail differently.
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(png_claiming(width, height), max_pixels)


def test_at_the_pixel_limit_is_fine(sample_images):
    assert decode_image(sample_images["jpeg_rgb"].data, 64 * 48).size == (64, 48)


def jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def expected_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """Shorter side `min_side`, the longer one as torchvision's `Resize(min_side)` sizes it (`int` of the float)."""
    if width <= height:
        return min_side, int(min_side * height / width)
    return int(min_side * width / height), min_side


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """2000x1500, red left half and blue right half: big enough that libjpeg can decode it at 1/2 scale."""
    img = Image.new("RGB", (2000, 1500), BLUE)
    img.paste(RED, (0, 0, 1000, 1500))
    return jpeg(img)


def test_big_jpeg_is_downscaled_to_min_side_and_reports_its_source_size(big_jpeg):
    decoded = decode_for_models(big_jpeg, LIMIT, 448)
    assert isinstance(decoded, DecodedImage)
    assert decoded.image.size == expected_size(2000, 1500, 448) == (597, 448)
    assert (decoded.width, decoded.height) == (2000, 1500)
    assert (decoded.image.mode, type(decoded.image)) == ("RGB", Image.Image)
    assert close(decoded.image.getpixel((100, 224)), RED) and close(decoded.image.getpixel((500, 224)), BLUE)


def test_jpeg_is_decoded_at_a_reduced_scale_never_below_the_target(big_jpeg, monkeypatch):
    drafted = []
    original_draft = JpegImageFile.draft

    def spy(self, mode, size):
        result = original_draft(self, mode, size)
        drafted.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    assert decode_image(big_jpeg, LIMIT, 448).size == (597, 448)
    [(requested, got)] = drafted
    assert requested == (597, 448)
    assert got == (1000, 750)  # libjpeg's 1/2 scale: 1/4 (500x375) would be under the target
    decode_image(big_jpeg, LIMIT, 100)
    assert drafted[-1] == ((133, 100), (250, 188))  # 1/8 is the smallest scale libjpeg offers


def test_exif_rotated_jpeg_reports_upright_size_and_comes_out_upright():
    stored = Image.new("RGB", (1500, 1000), BLUE)
    stored.paste(RED, (0, 0, 300, 300))  # stored top-left is displayed top-right (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_for_models(jpeg(stored, exif=exif.tobytes()), LIMIT, 448)
    assert (decoded.width, decoded.height) == (1000, 1500)
    assert decoded.image.size == expected_size(1000, 1500, 448) == (448, 672)
    assert close(decoded.image.getpixel((decoded.image.width - 10, 10)), RED, tolerance=20)
    assert close(decoded.image.getpixel((10, 10)), BLUE, tolerance=20)


@pytest.mark.parametrize("size", [(64, 48), (600, 448), (448, 448), (300, 2000)])
def test_images_at_or_under_min_side_are_not_upscaled(size):
    decoded = decode_for_models(jpeg(Image.new("RGB", size, RED)), LIMIT, 448)
    assert decoded.image.size == size == (decoded.width, decoded.height)


@pytest.mark.parametrize("size", [(1200, 900), (700, 1100)])
def test_png_is_downscaled(size):
    buf = io.BytesIO()
    Image.new("RGBA", size, (*GREEN, 0)).save(buf, "PNG")  # fully transparent: white after compositing
    decoded = decode_for_models(buf.getvalue(), LIMIT, 448)
    assert decoded.image.size == expected_size(*size, 448)
    assert (decoded.width, decoded.height) == size
    assert colours(decoded.image) == {WHITE}


@pytest.mark.parametrize("fmt, colour", [("JPEG", (200, 120, 40)), ("PNG", (30, 90, 210)), ("WEBP", (10, 200, 100))])
def test_solid_colour_survives_the_resize(fmt, colour):
    buf = io.BytesIO()
    Image.new("RGB", (1000, 800), colour).save(buf, fmt)
    img = decode_image(buf.getvalue(), LIMIT, 448)
    assert img.size == expected_size(1000, 800, 448)
    assert all(close(pixel, colour) for _, pixel in img.getcolors(img.width * img.height))


def test_every_sample_mode_downscales_to_rgb(sample_images):
    for name, sample in sample_images.items():
        decoded = decode_for_models(sample.data, LIMIT, 8)  # every sample's shorter side is over 8
        assert (decoded.width, decoded.height) == sample.size, name
        assert (decoded.image.mode, decoded.image.size) == ("RGB", expected_size(*sample.size, 8)), name
    assert colours(decode_image(sample_images["png_la"].data, LIMIT, 8)) == {WHITE}
    assert close(decode_image(sample_images["jpeg_cmyk"].data, LIMIT, 8).getpixel((4, 4)), RED)


def test_decode_image_and_decode_for_models_agree_without_min_side(sample_images):
    for name, sample in sample_images.items():
        decoded = decode_for_models(sample.data, LIMIT)
        assert (decoded.width, decoded.height) == decoded.image.size == sample.size, name
        assert decoded.image.tobytes() == decode_image(sample.data, LIMIT).tobytes(), name


def test_pixel_limit_is_checked_before_downscaling(big_jpeg):
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_for_models(big_jpeg, 2000 * 1500 - 1, 448)


def test_min_side_must_be_positive(big_jpeg):
    with pytest.raises(ValueError, match="min_side"):
        decode_for_models(big_jpeg, LIMIT, 0)


def test_one_line():
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert len(one_line(ValueError("x" * 1000))) == 200



# --- decode memory -----------------------------------------------------------------------------------

MiB = 2**20
DEFAULT_CAP = 256 * MiB  # FetchConfig's --max_image_decoded_bytes
DEFAULT_MIN_SIDE = FetchConfig().resize_min_side


def naive_rgb(data: bytes, min_side: int | None) -> Image.Image:
    """The straightforward decode (upright, composite the whole image on white, convert, resize): several
    full-size copies, but plainly right. The decode must give these pixels with one full-size image."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode.startswith("I"):
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (*WHITE, 255)), img)
    img = img.convert("RGB")
    if min_side is None or min(img.size) <= min_side:
        return img
    return img.resize(expected_size(*img.size, min_side), Image.Resampling.BICUBIC, reducing_gap=2.0)


def noise(mode: str, size: tuple[int, int]) -> Image.Image:
    """Independent noise in every band (alpha too: partly transparent), so a misplaced or mis-averaged pixel
    anywhere shows."""
    bands = Image.new(mode, (1, 1)).getbands()
    return Image.merge(mode, [Image.effect_noise(size, 60 + 20 * i) for i in range(len(bands))])


def png(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1, **kwargs)
    return buf.getvalue()


NOISY_PNGS = {
    "RGBA": lambda size: png(noise("RGBA", size)),
    "LA": lambda size: png(noise("LA", size)),
    "P + transparency": lambda size: png(Image.effect_noise(size, 80).convert("P"), transparency=7),
    "L": lambda size: png(Image.effect_noise(size, 80)),
    "I;16": lambda size: png(Image.effect_noise(size, 80).convert("I").point(lambda v: v * 250).convert("I;16")),
    "RGB": lambda size: png(noise("RGB", size)),
}


@functools.cache
def noisy_png(kind: str) -> bytes:
    """2341x1901: at 448 px it is first reduced 2x2; half a million pixels are 223 rows of it (odd: a strip
    must be cut at 222 to hold whole 2x2 blocks), and the last of the 9 strips is partial and of an odd height."""
    return NOISY_PNGS[kind]((2341, 1901))


@pytest.mark.parametrize("min_side", [448, DEFAULT_MIN_SIDE, None])
@pytest.mark.parametrize("kind", NOISY_PNGS)
def test_the_decode_gives_the_pixels_of_the_straightforward_decode(kind, min_side):
    data = noisy_png(kind)
    decoded = decode_for_models(data, LIMIT, min_side)
    expected = naive_rgb(data, min_side)
    assert decoded.image.size == expected.size
    assert decoded.image.tobytes() == expected.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation):
    stored = noise("RGBA", (1500, 1000))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png(stored, exif=exif.tobytes())
    full = decode_for_models(data, LIMIT)
    assert full.image.tobytes() == naive_rgb(data, None).tobytes()  # exif_transpose decides what upright is
    small = decode_for_models(data, LIMIT, 448)
    assert (small.width, small.height) == (full.width, full.height) == full.image.size
    # Downscaled, then turned (not turned, then downscaled): the two filter passes round, and clip bicubic's
    # overshoot, in the other order. On noise, where every pixel is an edge, 2% of the values move by more than one
    # level; a picture turned the wrong way would be off by about 80 on average.
    diff = np.abs(np.asarray(small.image, dtype=int) - np.asarray(naive_rgb(data, 448), dtype=int))
    assert diff.mean() < 0.3 and (diff > 1).mean() < 0.03


def test_a_decode_over_the_memory_cap_is_refused_from_the_header(png_claiming):
    # 9400x9400 RGBA (88 Mpx, under the pixel cap): 353 MB decoded. The file holds no pixels, so had the decode
    # begun it would have failed otherwise.
    with pytest.raises(ImageDecodeError) as info:
        decode_for_models(png_claiming(9400, 9400, "RGBA"), LIMIT, 448, DEFAULT_CAP)
    needed = decoded_bytes(png_claiming(9400, 9400, "RGBA"), 448)
    assert needed > 9400 * 9400 * 4  # Pillow stores RGBA at 4 bytes a pixel, and the decode needs more
    assert info.value.reason == (f"too large to decode: a 9400x9400 PNG needs {needed} bytes, "
                                 f"over the limit of {DEFAULT_CAP}")
    with pytest.raises(ImageDecodeError) as info:  # the same size in greyscale is a quarter of that: it passes
        decode_for_models(png_claiming(9400, 9400, "L"), LIMIT, 448, DEFAULT_CAP)
    assert not info.value.reason.startswith("too large")
    with pytest.raises(ImageDecodeError) as info:  # so does a 7500x7500 RGBA one
        decode_for_models(png_claiming(7500, 7500, "RGBA"), LIMIT, 448, DEFAULT_CAP)
    assert not info.value.reason.startswith("too large")


@pytest.fixture(scope="module")
def photo_4000x3000() -> Image.Image:
    return noise("RGB", (400, 300)).resize((4000, 3000), Image.Resampling.BICUBIC)


def test_a_big_jpeg_is_cheap_to_decode_small_unless_progressive(photo_4000x3000):
    """libjpeg decodes a baseline JPEG at 1/4 scale a row of blocks at a time, but keeps every DCT coefficient
    of a progressive one at full size (2 bytes each, 1.5 per pixel in 4:2:0): 36 MB for 4000x3000."""
    baseline, progressive = jpeg(photo_4000x3000), jpeg(photo_4000x3000, progressive=True)
    cap = 32 * MiB
    assert decode_for_models(baseline, LIMIT, 448, cap).image.size == (597, 448)
    besides_the_data = [decoded_bytes(data, 448) - len(data) for data in (baseline, progressive)]
    assert besides_the_data[1] - besides_the_data[0] >= 4000 * 3000 * 1.5 * 2
    with pytest.raises(ImageDecodeError, match=r"^too large to decode: a 4000x3000 JPEG needs \d+ bytes"):
        decode_for_models(progressive, LIMIT, 448, cap)
    assert decode_for_models(progressive, LIMIT, 448).image.size == (597, 448)  # without a cap it decodes


PEAK = textwrap.dedent("""
    import json, sys
    from map_fns.images import decode_for_models

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

    data = open(sys.argv[1], "rb").read()
    min_side = int(sys.argv[2]) or None
    decode_for_models(open(sys.argv[3], "rb").read(), 10**9, min_side)  # load the codecs first
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts from the current resident set
    before = kib("VmRSS")
    decode_for_models(data, 10**9, min_side)
    print(json.dumps((kib("VmHWM") - before) * 1024))
""")


def shapes(mode: str, size: tuple[int, int]) -> Image.Image:
    """Flat ellipses, some partly transparent: a big image in a small file, so the file's size (which the
    estimate counts: some decoders copy it) cannot hide an error in the rest of it."""
    img = Image.new(mode, size)
    draw = ImageDraw.Draw(img)
    w, h = size
    for i in range(1, 5):
        colour = {"RGBA": (60 * i, 255 - 50 * i, 90, 70 * i - 30), "RGB": (60 * i, 90, 40 * i), "L": 50 * i}[mode]
        draw.ellipse((w * i // 9, h * i // 11, w * (i + 4) // 9, h * (i + 5) // 11), fill=colour)
    return img


MEMORY_CASES = {  # name -> (image, its format and save options)
    "RGBA PNG": (lambda: shapes("RGBA", (4000, 3000)), "PNG", {}),
    "P PNG with transparency": (lambda: shapes("L", (4000, 3000)).convert("P"), "PNG", {"transparency": 0}),
    "L PNG": (lambda: shapes("L", (4000, 3000)), "PNG", {}),
    "progressive JPEG": (lambda: noise("RGB", (400, 300)).resize((4000, 3000)), "JPEG", {"progressive": True}),
    "WEBP": (lambda: noise("RGB", (300, 200)).resize((3000, 2000)), "WEBP", {}),
}


@pytest.mark.parametrize("min_side", [448, DEFAULT_MIN_SIDE, 0])
@pytest.mark.parametrize("kind", MEMORY_CASES)
def test_a_decode_holds_no_more_memory_than_its_estimate(tmp_path, kind, min_side):
    """The cap is only a bound if the estimate is: measure the peak resident memory of one decode (after one
    of a small image of the same kind, which loads the codec but leaves no big free memory to reuse)."""
    make, fmt, options = MEMORY_CASES[kind]
    image = make()
    for name, img in (("image", image), ("warm", image.resize((64, 48)))):
        img.save(tmp_path / name, fmt, **options)
    run = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "image"), str(min_side), str(tmp_path / "warm")],
                         capture_output=True, text=True, check=True, cwd=os.getcwd())
    peak = json.loads(run.stdout)
    estimate = decoded_bytes((tmp_path / "image").read_bytes(), min_side or None)
    assert peak <= estimate, f"{kind}: peak {peak / MiB:.1f} MiB over the estimate {estimate / MiB:.1f} MiB"
    assert peak > estimate / 3  # a bound, not a wild guess


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()

"""Turn untrusted image bytes into a plain RGB `PIL.Image`, or a one-line reason why not."""

import io
from dataclasses import dataclass

from PIL import ExifTags, Image, UnidentifiedImageError

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "PA"}
_WHITE = (255, 255, 255, 255)
_T = Image.Transpose
_UPRIGHT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
            7: _T.TRANSVERSE, 8: _T.ROTATE_90}  # EXIF orientation -> the transpose showing it upright (EXIF 2.3)
_SWAPS_SIDES = {_T.TRANSPOSE, _T.ROTATE_270, _T.TRANSVERSE, _T.ROTATE_90}
# Bytes per pixel in Pillow's memory: "1", "L" and "P" take one, 16-bit greyscale two, every other mode four
# (RGB included: it is stored as RGBX). Measured on Pillow 13 from the resident memory of `Image.new`.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_RGB_BYTES = 4
# What Pillow 13's decoders hold besides the image and a copy of the encoded data, in bytes per decoded pixel
# (peak resident memory measured on 3000x2000 RGB, RGBA and L images, rounded up): libwebp keeps two RGBA canvases
# and Pillow copies the frame once more (13.3 measured); openjpeg holds every component as int32 (17.9); libavif
# its YUV planes and an RGB copy (8.7). PNG, TIFF, GIF, BMP and baseline JPEG decode a few rows at a time (under
# the size of the data: 0.5 of 3.1 bytes per pixel for a noise PNG); a progressive JPEG: `_jpeg_coefficient_bytes`.
_DECODER_BYTES = {"WEBP": 15, "AVIF": 10, "JPEG2000": 19}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn: markers without a length
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn
_JPEG_PROGRESSIVE_FRAMES = {0xC2, 0xC6, 0xCA, 0xCE}
_JPEG_SCAN = 0xDA  # SOS
# Pixels converted to RGB at a time when the result is built strip by strip. A strip is held at most six times
# at once (cropped, as RGBA, the white background, composited, as RGB, and Pillow's own intermediate converting
# a palette with transparency), at up to 4 bytes a pixel: 12 MiB.
_STRIP_PIXELS = 1 << 19
_STRIP_BYTES = 6 * _STRIP_PIXELS * 4
# Bicubic, the models' own filter (antialiased, as Pillow's downscaling filters all are). Each model's processor
# resizes again, and the decode is meant to give it what it would make of the full image: measured on big photographs
# at the default min side (bench/model_inputs.py), bilinear leaves 0.003 mean and 0.12 max (normalised units) against
# bicubic's 0.002 and 0.045; Lanczos gains under 0.0002 for 20-40% more time.
_RESAMPLE = Image.Resampling.BICUBIC
# `resize` first shrinks by a whole factor with `Image.reduce` (a fast box filter), leaving at least this ratio to
# the resampling filter. At the default min side only images over 5376 px on their shorter side are reduced, and a
# JPEG never is (its DCT-scaled decode is already within 2x of the target). Reducing keeps the copy a huge PNG is
# converted into small; it costs little: an 8400x5600 PNG reaches RN50x64 0.0023 (mean) from its processor's input
# on the full image, against 0.0014 unreduced (3.0 would not reduce it), in the same time.
_REDUCING_GAP = 2.0


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; `reason` is a short one-line explanation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded RGB image, maybe downscaled, and the upright (EXIF-applied) size of the source image."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int, min_side: int | None = None,
                 max_decoded_bytes: int | None = None) -> Image.Image:
    """Decode `data` to a fully loaded RGB image, upright, first frame only, alpha flattened onto white.

    With `min_side`, an image whose shorter side is longer than that is scaled down (bicubic, aspect kept) so
    that its shorter side is exactly `min_side`, the longer one rounded down as torchvision's `Resize` does;
    smaller images are never scaled up.

    Raises `ImageDecodeError` for empty, corrupt, truncated or non-image data, for images over `max_pixels`
    or Pillow's global `Image.MAX_IMAGE_PIXELS`, and for images whose decode would hold more than
    `max_decoded_bytes` bytes of memory (`decoded_bytes`; None: no limit); both limits are checked from the
    header, before any pixel is allocated.
    """
    return decode_for_models(data, max_pixels, min_side, max_decoded_bytes).image


def decode_for_models(data: bytes, max_pixels: int, min_side: int | None = None,
                      max_decoded_bytes: int | None = None) -> DecodedImage:
    """`decode_image`, also giving the source image's upright width and height (the image may be smaller).

    A JPEG is decoded straight at a reduced size (libjpeg's DCT scaling, 1/2 to 1/8, never below the target),
    so a 6000x4000 photo wanted at 1344 px is decoded at 3000x2000. Other images are converted to RGB a
    strip at a time, so that the decoded source is the only full-size image in memory (see `decoded_bytes`).
    Same errors as `decode_image`; `ValueError` for a `min_side` under 1.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    if not data:
        raise ImageDecodeError("empty body")
    # Pillow only *warns* between its limit and twice that, and warning filters are process-global (not
    # safe to flip per call from the fetch threads), so enforce its limit here too.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
        width, height = img.size
        if width * height > limit:
            raise ImageDecodeError(f"decompression bomb: {width}x{height} is over {limit} pixels")
        img, target, extent = _drafted(img, data, min_side)
        needed = _bytes_held(img, data, target, extent)
        if max_decoded_bytes is not None and needed > max_decoded_bytes:
            raise ImageDecodeError(f"too large to decode: a {width}x{height} {img.format} needs {needed} bytes, "
                                   f"over the limit of {max_decoded_bytes}")
        img.load()  # decode now, so truncated/corrupt data fails here and not in a later stage
        upright = _UPRIGHT.get(img.getexif().get(ExifTags.Base.Orientation, 1))  # as ImageOps.exif_transpose
        if upright in _SWAPS_SIDES:
            width, height = height, width
        if target is None or img.size == target:
            if upright is not None:
                img = img.transpose(upright)  # before the RGB copy, which is never smaller
            return DecodedImage(_rgb(img, (1, 1)), width, height)
        small = _downscaled_rgb(img, target, extent)
        return DecodedImage(small.transpose(upright) if upright is not None else small, width, height)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError("cannot identify image file") from e  # str(e) names a BytesIO object
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the latter under `-W error`
        raise ImageDecodeError(f"decompression bomb: {e}") from e
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ... on bad data
        raise ImageDecodeError(one_line(e)) from e


def decoded_bytes(data: bytes, min_side: int | None = None) -> int:
    """The most memory, in bytes, that `decode_for_models(data, ..., min_side)` holds at once, read from the
    header alone: the decoded image (after JPEG scaling, at Pillow's own storage: 1 byte a pixel for "L" and
    "P", 4 for RGB), what the format's decoder keeps besides it (a copy of `data` at most, buffers), the strip
    being converted, the RGB image reduced from it by a whole factor, the resize's intermediate and the
    result. Raises what `Image.open` raises for data that is not an image."""
    img, target, extent = _drafted(Image.open(io.BytesIO(data)), data, min_side)
    return _bytes_held(img, data, target, extent)


def _drafted(img: Image.Image, data: bytes,
             min_side: int | None) -> tuple[Image.Image, tuple[int, int] | None, tuple[float, float]]:
    """The opened `img` set to decode at a reduced scale if it is a JPEG (never below the models' size), the
    size the result is scaled to (None: kept as it is), and the source's extent in the decoded pixels.

    The extent is the decoded size unless libjpeg scaled by 1/n a side that n does not divide: its last pixel
    then stands for only part of n source pixels (5 rows at 1/2 decode to 3, the source spanning 2.5), and
    resizing the whole 3 would stretch the picture by a fraction of a pixel. Which side is shorter does not
    depend on the orientation: the target is in the stored orientation."""
    target = _scaled_to(*img.size, min_side)
    if target is not None:
        drafted = img.draft("RGB", target)  # JPEG only (None for other formats); sizes stay >= target
        if img.size[0] < target[0] or img.size[1] < target[1]:  # not expected from Pillow; never upscale
            img, drafted = Image.open(io.BytesIO(data)), None
        if drafted is not None:
            return img, target, drafted[1][2:]
    return img, target, img.size


def _bytes_held(img: Image.Image, data: bytes, target: tuple[int, int] | None, extent: tuple[float, float]) -> int:
    """`decoded_bytes` of an opened (and drafted) `img`."""
    width, height = img.size
    source = len(data) + width * height * (_STORED_BYTES.get(img.mode, 4) + _DECODER_BYTES.get(img.format, 0))
    if img.format in ("JPEG", "MPO"):
        source += _jpeg_coefficient_bytes(data)
    if target is None or img.size == target:
        return source + _STRIP_BYTES + width * height * _RGB_BYTES
    fx, fy = _reducing_factors(extent, target)
    reduced_width, reduced_height = -(-width // fx), -(-height // fy)
    # The resize filters rows first, into an image of the target's width and the reduced image's height; an RGB
    # image is resized as it is when no whole factor reduces it, anything else goes through a converted copy.
    copied = not _is_plain_rgb(img) or (fx, fy) != (1, 1)
    pixels = (reduced_width * reduced_height if copied else 0) + target[0] * reduced_height + target[0] * target[1]
    return source + _STRIP_BYTES + pixels * _RGB_BYTES


def _jpeg_coefficient_bytes(data: bytes) -> int:
    """What libjpeg holds for a JPEG in several scans (progressive, or a first scan without every component):
    every DCT coefficient of the full-size image (2 bytes each), whatever the scale it decodes at. Else 0.

    Walks the marker segments up to the first scan, as libjpeg does (bytes between segments are skipped).
    """
    pos, frame, progressive = 2, b"", False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF or data[pos + 1] == 0xFF:  # junk, or fill bytes before a marker
            pos += 1
            continue
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        body = data[pos + 4 : pos + 2 + length]
        if marker in _JPEG_FRAMES:
            frame, progressive = body, marker in _JPEG_PROGRESSIVE_FRAMES
        elif marker == _JPEG_SCAN and len(frame) >= 6 and body:
            height, width, components = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
            if not progressive and body[0] >= components:
                return 0  # one interleaved scan: decoded a row of blocks at a time
            sampling = [(b >> 4, b & 15) for b in frame[7 : 6 + 3 * components : 3]]
            h_max, v_max = max([h for h, _ in sampling] + [1]), max([v for _, v in sampling] + [1])
            blocks_per_mcu = sum(h * v for h, v in sampling)
            return -(-width // (8 * h_max)) * -(-height // (8 * v_max)) * blocks_per_mcu * 64 * 2
        elif marker == _JPEG_SCAN:
            return 0
        pos += 2 + length
    return 0


def _scaled_to(width: int, height: int, min_side: int | None) -> tuple[int, int] | None:
    """(w, h) with the shorter side `min_side` and the longer one by torchvision's `Resize` rule (rounded down),
    or None to keep the image as it is.

    A model that resizes the shorter side to m, m dividing `min_side` (k = min_side / m), then gets the longer
    side it would get from the source: floor(floor(k * x) / k) = floor(x) for x = m * longer / shorter. Rounded
    to nearest instead, it may get one pixel more, so a slightly different scale and crop: a picture up to half a
    pixel off.
    """
    shorter = min(width, height)
    if min_side is None or shorter <= min_side:
        return None
    if width <= height:
        return min_side, height * min_side // width
    return width * min_side // height, min_side


def _reducing_factors(extent: tuple[float, float], target: tuple[int, int]) -> tuple[int, int]:
    """The whole factors `Image.resize(target, box=(0, 0, *extent), reducing_gap=_REDUCING_GAP)` first
    box-reduces by."""
    return int(extent[0] / target[0] / _REDUCING_GAP) or 1, int(extent[1] / target[1] / _REDUCING_GAP) or 1


def _downscaled_rgb(img: Image.Image, target: tuple[int, int], extent: tuple[float, float]) -> Image.Image:
    """`img`'s `extent` as RGB at `target`: the same pixels as converting `img` whole, then `resize(target,
    _RESAMPLE, box=(0, 0, *extent), reducing_gap=_REDUCING_GAP)`, without a full-size RGB copy (each strip is
    converted, then reduced)."""
    if _is_plain_rgb(img):  # nothing to convert: Pillow reduces it itself
        return img.resize(target, _RESAMPLE, box=(0, 0, *extent), reducing_gap=_REDUCING_GAP)
    fx, fy = _reducing_factors(extent, target)
    reduced = _rgb(img, (fx, fy))
    return reduced.resize(target, _RESAMPLE, box=(0, 0, extent[0] / fx, extent[1] / fy))


def _is_plain_rgb(img: Image.Image) -> bool:
    return img.mode == "RGB" and "transparency" not in img.info


def _rgb(img: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """A new RGB image of `img` box-reduced by `factors` (as `Image.reduce`), built a strip at a time: whole
    block rows, so that the reduction is the same as reducing the whole image."""
    fx, fy = factors
    width, height = img.size
    out = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    rows = fy * max(1, _STRIP_PIXELS // (width * fy))
    for top in range(0, height, rows):
        strip = _to_rgb(img.crop((0, top, width, min(height, top + rows))))
        out.paste(strip if factors == (1, 1) else strip.reduce(factors), (0, top // fy))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white (as a viewer on a web page shows it)."""
    if img.mode.startswith("I"):  # 16-bit greyscale ("I;16*", "I"): a direct convert clips everything >255 to white
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def one_line(e: object) -> str:
    """First line of an exception's (or any object's) message, else its type name; at most 200 chars."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]

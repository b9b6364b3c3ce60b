"""Peak memory and time of one image decode (`map_fns.images.decode_for_models`), each in a fresh process.

    python bench/decode_memory.py [--min_side N] [--repo DIR] [--save DIR] [--compare DIR]

Big images are where a decode's memory goes: a 9400x9400 RGBA PNG is a few hundred KB on the wire and
hundreds of MB decoded. For each sample image this runs one decode at the models' size (`--min_side`, default
the fetch stage's `--resize_min_side`) in its own process and reports the growth of its resident-set
high-water mark (`VmHWM`, reset just before; `ru_maxrss` would start at the parent's size, which a child
inherits through fork) over what the process held just before: the decode's peak. `--repo` imports `map_fns`
from another checkout (to measure a version before a change: `git archive main | tar -x -C /tmp/before`),
`--save` keeps each result as PNG, and `--compare` prints how far this run's results are from those saved by
another.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CACHE_VERSION = 1  # bump when a sample changes
CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from map_fns.images import decode_for_models

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

data = open(sys.argv[2], "rb").read()
decode_for_models(open(sys.argv[3], "rb").read(), 10**9, 8)  # load the codecs before measuring
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident set
before = kib("VmRSS")
start = time.perf_counter()
decoded = decode_for_models(data, 10**9, int(sys.argv[4]))  # no cap: measure the decode itself
seconds = time.perf_counter() - start
peak = kib("VmHWM")
decoded.image.save(sys.argv[5])
json.dump({"peak_mb": (peak - before) / 1024, "seconds": seconds, "size": decoded.image.size}, sys.stdout)
"""


def samples() -> dict[str, tuple[str, Callable[[], Image.Image]]]:
    """name -> (file format, a function making the image): big images of each kind the decode treats apart."""
    from PIL import ImageDraw

    def shapes(mode: str, size: tuple[int, int], background, colours) -> Image.Image:
        img = Image.new(mode, size, background)
        draw = ImageDraw.Draw(img)
        w, h = size
        for i, colour in enumerate(colours):
            draw.ellipse((w * i // 8, h * i // 9, w * (i + 3) // 8, h * (i + 4) // 9), fill=colour)
        return img

    def photo(size: tuple[int, int]) -> Image.Image:
        small = Image.effect_noise((size[0] // 40, size[1] // 40), 60).convert("RGB")
        return Image.merge("RGB", [small.getchannel(0), small.getchannel(0).rotate(90), small.getchannel(0)]).resize(
            size, Image.Resampling.BICUBIC)

    rgba = [(255, 0, 0, 255), (0, 128, 255, 128), (20, 200, 20, 255), (0, 0, 0, 40)]
    return {
        "RGBA PNG 9400x9400": ("PNG", lambda: shapes("RGBA", (9400, 9400), (0, 0, 0, 0), rgba)),
        "L PNG 9400x9400": ("PNG", lambda: shapes("L", (9400, 9400), 30, [200, 90, 255, 0])),
        "P PNG 8000x8000 + transparency": ("PNG", lambda: shapes("P", (8000, 8000), 0, [1, 2, 3, 4])),
        "RGB PNG 8000x6000": ("PNG", lambda: shapes("RGB", (8000, 6000), (9, 9, 9), [c[:3] for c in rgba])),
        "RGB WEBP 6000x4000": ("WEBP", lambda: photo((6000, 4000))),
        "RGB JPEG 8000x6000": ("JPEG", lambda: photo((8000, 6000))),
        "RGB JPEG 8000x6000 progressive": ("JPEG", lambda: photo((8000, 6000))),
        "RGB JPEG 1000x750 (typical)": ("JPEG", lambda: photo((1000, 750))),
    }


def make_files(folder: Path) -> dict[str, Path]:
    files = {}
    for name, (fmt, make) in samples().items():
        path = folder / (name.lower().replace(" ", "-").replace("+", "") + f".v{CACHE_VERSION}.{fmt.lower()}")
        if not path.exists():
            img, buf = make(), io.BytesIO()
            options = {"transparency": 0} if img.mode == "P" else {"progressive": True} if "progressive" in name else {}
            img.save(buf, fmt, **options)
            path.write_bytes(buf.getvalue())
        files[name] = path
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose map_fns to measure")
    parser.add_argument("--save", type=Path, help="folder to save each decoded result in (PNG)")
    parser.add_argument("--compare", type=Path, help="folder of another run's saved results to compare with")
    parser.add_argument("--min_side", type=int, help="shorter side decoded to (default: FetchConfig's)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "laion-coco-bench-decode")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from map_fns.fetch import FetchConfig
    from map_fns.images import decoded_bytes

    args.cache.mkdir(parents=True, exist_ok=True)
    files = make_files(args.cache)
    warm = args.cache / "warm.png"
    Image.new("RGBA", (16, 16)).save(warm)
    save = args.save or Path(tempfile.mkdtemp())
    save.mkdir(parents=True, exist_ok=True)
    cap = FetchConfig().max_image_decoded_bytes
    min_side = args.min_side or FetchConfig().resize_min_side
    print(f"one decode to shorter side {min_side}, map_fns from {args.repo}\npeak: resident-set growth during the "
          f"decode; estimate: images.decoded_bytes (this checkout); default cap: {cap} bytes")
    print(f"{'image':32} {'file KiB':>8} {'peak MiB':>8} {'estimate':>8} {'seconds':>8} {'result':>10}  {'cap':8}"
          + ("  vs --compare (max / mean abs diff)" if args.compare else ""))
    for name, path in files.items():
        out = save / f"{path.stem}.png"
        run = subprocess.run([sys.executable, "-c", CHILD, str(args.repo), str(path), str(warm), str(min_side),
                              str(out)], capture_output=True, text=True, check=True)
        result = json.loads(run.stdout)
        estimate = decoded_bytes(path.read_bytes(), min_side)
        line = (f"{name:32} {path.stat().st_size / 1024:8.0f} {result['peak_mb']:8.0f} {estimate / 2**20:8.0f} "
                f"{result['seconds']:8.2f} {'x'.join(map(str, result['size'])):>10}  "
                f"{'refused' if estimate > cap else 'decoded':8}")
        if args.compare:
            line += "  " + difference(out, args.compare / out.name)
        print(line, flush=True)


def difference(a: Path, b: Path) -> str:
    import numpy as np

    x, y = (np.asarray(Image.open(p), dtype=np.int16) for p in (a, b))
    if x.shape != y.shape:
        return f"sizes differ: {x.shape} vs {y.shape}"
    diff = np.abs(x - y)
    return f"{diff.max()} / {diff.mean():.4f} (of 255)"


if __name__ == "__main__":
    main()

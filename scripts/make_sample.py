"""Regenerate builder/sample/sample.parquet and builder/sample/LICENSE.md.

Maintenance script, not imported by the product. The sample is 16 openly
licensed photographs copied from files that PyPI packages ship, re-encoded as
JPEG (quality 85, longer side <= 512 px, RGB), with hand-written alt-texts.

Recreate it in a throwaway venv (these versions made the committed file):

    python -m venv /tmp/sample-venv
    /tmp/sample-venv/bin/pip install scikit-image==0.26.0 scikit-learn==1.9.1 \
        matplotlib==3.11.2 PyWavelets==1.9.0 pillow==13.0.0 datasets==5.2.0
    /tmp/sample-venv/bin/python scripts/make_sample.py

The source packages are only located on disk (importlib.util.find_spec), never
imported. See builder/sample/LICENSE.md for what each licence rests on.
"""

import importlib.metadata
import importlib.util
import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

OUT_DIR = Path(__file__).resolve().parent.parent / "builder" / "sample"
ROW_GROUP_SIZE = 8  # the builder splits a one-file source across processes by row group
MAX_SIDE, QUALITY = 512, 85

SKI = "https://github.com/scikit-image/scikit-image/raw/v0.26.0/src/skimage/data/"
PD, CC0, BY2 = "public domain", "CC0-1.0", "CC-BY-2.0"

# (distribution, file inside the installed package, URL of the original, licence, credit, alt-text)
SAMPLES = [
    ("scikit-image", "skimage/data/astronaut.png", "https://flic.kr/p/r9qvLn", PD,
     "NASA (NASA Great Images), via scikit-image",
     "Astronaut Eileen Collins in an orange flight suit, NASA portrait with US flag and shuttle model"),
    ("scikit-image", "skimage/data/camera.png", SKI + "camera.png", CC0,
     "Lav Varshney, via scikit-image",
     "Black and white photo of a man in a dark coat filming with a camcorder on a tripod in a field"),
    ("scikit-image", "skimage/data/chelsea.png", SKI + "chelsea.png", CC0,
     "Stefan van der Walt, via scikit-image",
     "Close-up of a tabby cat with green eyes"),
    ("scikit-image", "skimage/data/coffee.png", SKI + "coffee.png", CC0,
     "Rachel Michetti (courtesy of Pikolo Espresso Bar), via scikit-image",
     "Espresso in a red cup and saucer with a spoon on a wooden table"),
    ("scikit-image", "skimage/data/rocket.jpg",
     "https://www.flickr.com/photos/spacexphotos/16511594820/", PD,
     "SpaceX, via scikit-image",
     "SpaceX Falcon 9 rocket on the launch pad at dusk between lightning towers"),
    ("scikit-image", "skimage/data/hubble_deep_field.jpg",
     "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/", PD,
     "NASA / Hubble Space Telescope, via scikit-image",
     "Hubble eXtreme Deep Field: thousands of distant galaxies on black space"),
    ("scikit-image", "skimage/data/retina.jpg",
     "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg", CC0,
     "Mikael Häggström, via scikit-image",
     "Fundus photograph of a normal left eye showing the optic disc, macula and blood vessels"),
    ("scikit-image", "skimage/data/clock_motion.png", SKI + "clock_motion.png", PD,
     "Stefan van der Walt, via scikit-image",
     "Motion-blurred black and white photo of a round wall clock on a grey wall"),
    ("scikit-image", "skimage/data/brick.png", "https://cc0textures.com/view.php?tex=Bricks25", CC0,
     "CC0Textures (Bricks25), cropped and greyscaled by scikit-image",
     "Black and white photo of a brick wall seen at an angle"),
    ("scikit-image", "skimage/data/grass.png",
     "https://www.deviantart.com/linolafett/art/Grass-01-434853879", CC0,
     "linolafett (DeviantArt), cropped and greyscaled by scikit-image",
     "Black and white close-up of grass and clover leaves"),
    ("scikit-image", "skimage/data/gravel.png", "https://cc0textures.com/view.php?tex=Gravel04", CC0,
     "CC0Textures (Gravel04), cropped and greyscaled by scikit-image",
     "Black and white close-up of a bed of gravel stones"),
    ("scikit-image", "skimage/data/microaneurysms.png", SKI + "microaneurysms.png", CC0,
     "Andreas Maier, HRF Image Database (crop of 07_dr.JPG), via scikit-image",
     "Greyscale close-up of retinal blood vessels with small dark spots"),
    ("scikit-learn", "sklearn/datasets/images/china.jpg",
     "https://www.flickr.com/photos/danielbuechele/6061409035/", BY2,
     "danielbuechele (Flickr), via scikit-learn",
     "Chinese pagoda with red pillars and orange tiled roofs above a lake, Summer Palace, Beijing"),
    ("scikit-learn", "sklearn/datasets/images/flower.jpg",
     "https://www.flickr.com/photos/vultilion/6056698931/", BY2,
     "vultilion (Flickr), via scikit-learn",
     "Orange pompon dahlia flower against a dark green background"),
    ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
     "https://commons.wikimedia.org/wiki/File:Grace_Hopper.jpg", PD,
     "U.S. Navy, via Wikimedia Commons and Matplotlib",
     "Portrait of Commodore Grace Hopper in US Navy uniform in front of an American flag"),
    ("PyWavelets", "pywt/data/ascent.npz", "https://pixnio.com/people/accent-to-the-top", PD,
     "public-domain-image.com (now Pixnio), greyscaled by PyWavelets",
     "Black and white photo of people climbing an outdoor metal staircase, seen from below"),
]


def package_file(rel: str) -> Path:
    top, rest = rel.split("/", 1)
    spec = importlib.util.find_spec(top)  # locates the package without importing it
    return Path(spec.submodule_search_locations[0]) / rest


def to_jpeg(path: Path) -> bytes:
    if path.suffix == ".npz":
        im = Image.fromarray(np.load(path)["data"].astype(np.uint8))
    else:
        im = Image.open(path)
    im = im.convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # keeps aspect, never enlarges
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def main() -> None:
    features = datasets.Features({
        "URL": datasets.Value("string"), "TEXT": datasets.Value("string"),
        "image": datasets.Image(), "license": datasets.Value("string"),
        "credit": datasets.Value("string"),
    })
    rows, table_lines = [], []
    for i, (dist, rel, url, lic, credit, text) in enumerate(SAMPLES):
        name = f"{i:02d}_{Path(rel).stem}.jpg"
        rows.append({"URL": url, "TEXT": text, "image": {"bytes": to_jpeg(package_file(rel)), "path": name},
                     "license": lic, "credit": credit})
        version = importlib.metadata.version(dist)
        table_lines.append(f"| {i} | `{name}` (from `{rel}`) | {dist} {version} | {lic} | {credit} | {url} |")

    # pyarrow directly, for control over row groups; this schema carries the HF features metadata.
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    out = OUT_DIR / "sample.parquet"
    pq.write_table(table, out, row_group_size=ROW_GROUP_SIZE)
    (OUT_DIR / "LICENSE.md").write_text(LICENSE_HEAD + "\n".join(table_lines) + "\n" + LICENSE_TAIL,
                                        encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(rows)} rows, "
          f"{pq.ParquetFile(out).num_row_groups} row groups)")


LICENSE_HEAD = """\
# Licences of the bundled sample (`sample.parquet`)

Generated by `scripts/make_sample.py`; edit the table there, not here.

Each row's image is a photograph copied from a file shipped inside the named
PyPI package, re-encoded as JPEG (quality 85, longer side at most 512 px, RGB).
The alt-texts (`TEXT`) were written for this sample. `URL` is the original's
public page where the package names one, otherwise the file in the package's
repository; the builder never fetches it, since the bytes are embedded.

| row | file name | source package | licence | credit | URL |
| --- | --- | --- | --- | --- | --- |
"""

LICENSE_TAIL = """
## What each licence rests on

- scikit-image rows: the licence notes in the docstrings of
  `skimage/data/_fetchers.py` (astronaut: "No known copyright restrictions,
  released into the public domain", NASA; rocket: released into the public
  domain by SpaceX; hubble_deep_field: NASA, public domain; clock: "Released into
  the public domain by the photographer"; camera, chelsea, coffee, retina,
  microaneurysms, brick, grass, gravel: CC0, each naming its author or source).
- scikit-learn rows: `sklearn/datasets/images/README.txt`, Creative Commons
  Attribution 2.0 (https://creativecommons.org/licenses/by/2.0/). That README's
  "Attribution" line for flower.jpg repeats danielbuechele, but its Flickr links
  for that photo are to the user vultilion, who is credited here.
- matplotlib row: the JPEG comment of `grace_hopper.jpg` names its source,
  Wikimedia Commons `File:Grace_Hopper.jpg`, a U.S. Navy photograph, which is in
  the public domain as a work of the U.S. federal government.
- PyWavelets row: the `pywt.data.ascent` docstring derives the image from
  "accent-to-the-top.jpg at http://www.public-domain-image.com/people-public-domain-images-pictures/"
  (SciPy's `scipy.datasets.ascent` names the same photo at pixnio.com).

## The compilation

The compilation of this sample (selection, alt-texts, the parquet file itself,
and the MS-COCO-style reference captions in `references.jsonl`, written for it)
is released under CC0 1.0 (https://creativecommons.org/publicdomain/zero/1.0/).
The images keep their own licences above; the CC-BY-2.0 rows require
attribution as given in their `credit` column.
"""

if __name__ == "__main__":
    main()

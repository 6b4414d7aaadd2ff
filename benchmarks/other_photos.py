"""A second set of photographs no bundled model was trained on, for
`real_inputs.py --hr DIR`: 16 colour photos from the Machine Vision Toolbox's
image package on PyPI (`mvtb-images`, a source distribution of ~90 MB; package
registries are the one place this project's machines can download from).

Each photo is downscaled by 3 where a side exceeds 3,000 px, centre-cropped to
at most 512 x 512 and trimmed to a multiple of 4, so x4 LR sides are whole.

    python3 benchmarks/other_photos.py DIR
    python3 benchmarks/real_inputs.py --hr DIR --work /tmp/real-mvtb
    python3 benchmarks/other_photos.py --more DIR2   # a third set: 13 other photos of the package
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import urllib.request
from pathlib import Path

from PIL import Image

PACKAGE = "mvtb-images"
VERSION = "1.1"
PHOTOS = ("58060", "church", "eiffel2-1", "eiffel2-2", "flowers1", "flowers5", "flowers9", "greenscreen",
          "notre-dame", "parks", "rocks2-l", "roof", "tomato_54", "walls-l", "monalisa", "yellowtargets")
MORE_PHOTOS = ("building2-1", "butterfly", "castle", "castle2", "flowers2", "flowers4", "flowers7", "penguins",
               "road", "rocks2-r", "street", "tomato_14", "walls-r")
SIDE = 512


def sdist_url() -> str:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{PACKAGE}/json", timeout=60) as r:
        files = json.load(r)["releases"][VERSION]
    return next(f["url"] for f in files if f["packagetype"] == "sdist")


def prepare(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
    if max(im.size) > 3000:
        im = im.resize((im.width // 3, im.height // 3), Image.LANCZOS)
    w, h = min(im.width, SIDE), min(im.height, SIDE)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w - w % 4, top + h - h % 4))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--more", action="store_true", help="the 13 other photos instead of the 16")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(sdist_url(), timeout=600) as r:
        archive = tarfile.open(fileobj=io.BytesIO(r.read()), mode="r:gz")
    members = {Path(m.name).stem: m for m in archive.getmembers() if m.name.endswith((".png", ".jpg"))}
    for name in MORE_PHOTOS if args.more else PHOTOS:
        im = prepare(Image.open(archive.extractfile(members[name])))
        im.save(args.out / f"{name}.png")
        print(f"{name}: {im.width}x{im.height}")


if __name__ == "__main__":
    main()

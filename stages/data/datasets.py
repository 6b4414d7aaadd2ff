"""Training datasets, read from their official files (never from pickles).

A dataset stage is `factory(root, split, captions) -> list[Record]`, split
being "train" or "test".  An incomplete folder raises DatasetError saying what
is missing and what the layout should be.

- cub:    CUB_200_2011/{images/, images.txt, bounding_boxes.txt} and the
          10-captions-per-image bird text (text/ or text_c10/, from Reed et al.'s
          cvpr2016_cub) with its class-disjoint split trainvalclasses.txt /
          testclasses.txt (150 / 50 classes = 8,855 / 2,933 images).
- coco:   {train2014,val2014}/ + annotations/captions_{train,val}2014.json.
- celeba: images (CelebA-HQ-img/ or images/) + celeba-caption/<id>.txt, split
          by train.txt / test.txt lists of image names when present, else the
          last 10% of the sorted ids are the test split.
- folder: any image folder + a captions file in the upscale formats, or
          per-image .txt sidecars.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipsr_cli.errors import UserError
from clipsr_cli.io.images import IMAGE_EXTS, image_files
from clipsr_cli.plugins.hookspecs import hookimpl
from clipsr_cli.plugins.protocols import Record


class DatasetError(UserError, ValueError):
    pass


def _need(root: Path, parts: list[str], layout: str) -> None:
    missing = [p for p in parts if not (root / p).exists()]
    if missing:
        raise DatasetError(f"{root}: missing {', '.join(missing)}; expected layout: {layout}")


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use train or test")
    return split


# --- CUB-200-2011 -------------------------------------------------------------
CUB_LAYOUT = ("ROOT/CUB_200_2011/{images/, images.txt, bounding_boxes.txt}, ROOT/text/<class>/<image>.txt "
              "(or text_c10/), ROOT/trainvalclasses.txt and ROOT/testclasses.txt (from cvpr2016_cub)")


def bird_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Square crop around the bounding box, 1.5x its larger side, clipped to the
    image (the AttnGAN / DF-GAN / GALIP preprocessing of CUB)."""
    x, y, w, h = box
    r = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def load_cub(root: Path, split: str, captions: str = "") -> list[Record]:
    from PIL import Image

    root = Path(root)
    _need(root, ["CUB_200_2011/images", "CUB_200_2011/images.txt", "CUB_200_2011/bounding_boxes.txt",
                 "trainvalclasses.txt", "testclasses.txt"], CUB_LAYOUT)
    text_dir = next((root / d for d in ("text", "text_c10") if (root / d).is_dir()), None)
    if text_dir is None:
        raise DatasetError(f"{root}: missing the caption folder text/ (or text_c10/); expected layout: {CUB_LAYOUT}")
    cub = root / "CUB_200_2011"
    classes = set(_lines(root / ("trainvalclasses.txt" if _split(split) == "train" else "testclasses.txt")))
    names = dict(ln.split(maxsplit=1) for ln in _lines(cub / "images.txt"))
    boxes = {k: tuple(map(float, v.split())) for k, v in
             (ln.split(maxsplit=1) for ln in _lines(cub / "bounding_boxes.txt"))}
    records = []
    for image_id, rel in sorted(names.items(), key=lambda kv: int(kv[0])):
        if rel.split("/")[0] not in classes:
            continue
        path = cub / "images" / rel
        caption_file = text_dir / Path(rel).with_suffix(".txt")
        if not caption_file.is_file():
            raise DatasetError(f"{caption_file}: caption file of {rel} is missing; expected layout: {CUB_LAYOUT}")
        if image_id not in boxes:
            raise DatasetError(f"{cub / 'bounding_boxes.txt'}: no box for image id {image_id} ({rel})")
        with Image.open(path) as im:  # header only: the size clips the box
            box = bird_box(boxes[image_id], *im.size)
        records.append(Record(path, tuple(_lines(caption_file)), box))
    return records


# --- COCO 2014 ----------------------------------------------------------------
COCO_LAYOUT = "ROOT/{train2014,val2014}/*.jpg and ROOT/annotations/captions_{train2014,val2014}.json"


def load_coco(root: Path, split: str, captions: str = "") -> list[Record]:
    root = Path(root)
    part = "train2014" if _split(split) == "train" else "val2014"
    ann = f"annotations/captions_{part}.json"
    _need(root, [part, ann], COCO_LAYOUT)
    data = json.loads((root / ann).read_text(encoding="utf-8"))
    by_id: dict[int, list[str]] = {}
    for a in data.get("annotations", []):
        by_id.setdefault(a["image_id"], []).append(a["caption"].strip())
    records = []
    for im in sorted(data.get("images", []), key=lambda im: im["id"]):
        caps = by_id.get(im["id"])
        if caps:
            records.append(Record(root / part / im["file_name"], tuple(caps)))
    return records


# --- CelebA (multi-modal CelebA-HQ captions) ------------------------------------
CELEBA_LAYOUT = ("ROOT/CelebA-HQ-img/<id>.jpg (or images/) and ROOT/celeba-caption/<id>.txt "
                 "(10 captions a file); optional ROOT/train.txt, ROOT/test.txt listing image names")


def load_celeba(root: Path, split: str, captions: str = "") -> list[Record]:
    root = Path(root)
    image_dir = next((root / d for d in ("CelebA-HQ-img", "images") if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(f"{root}: missing the image folder CelebA-HQ-img/ (or images/); "
                           f"expected layout: {CELEBA_LAYOUT}")
    _need(root, ["celeba-caption"], CELEBA_LAYOUT)
    images = sorted((p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS),
                    key=lambda p: (len(p.stem), p.stem))
    listed = root / f"{_split(split)}.txt"
    if listed.is_file():
        wanted = {Path(n).stem for n in _lines(listed)}
        images = [p for p in images if p.stem in wanted]
    else:
        cut = len(images) - max(1, len(images) // 10)
        images = images[:cut] if split == "train" else images[cut:]
    records = []
    for p in images:
        caption_file = root / "celeba-caption" / f"{p.stem}.txt"
        if not caption_file.is_file():
            raise DatasetError(f"{caption_file}: caption file of {p.name} is missing; "
                               f"expected layout: {CELEBA_LAYOUT}")
        records.append(Record(p, tuple(_lines(caption_file))))
    return records


# --- any folder -----------------------------------------------------------------
def load_folder(root: Path, split: str = "train", captions: str = "") -> list[Record]:
    """All images under `root` (recursively) with their captions: from the
    captions file when given, else from `<image>.txt` sidecars."""
    from clipsr_cli.io.captions import Captions

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; --dataset folder needs an image folder as --data-root")
    table = Captions(root, Path(captions) if captions else None)
    records, uncaptioned = [], []
    for p in image_files(root):  # hidden files (macOS's ._ metadata) left out
        caps = [c for c in (table.get(p) or []) if c.strip()]
        if caps:
            records.append(Record(p, tuple(caps)))
        else:
            uncaptioned.append(p.relative_to(root).as_posix())
    if uncaptioned:
        where = captions or "<image>.txt sidecars"
        raise DatasetError(f"{root}: {len(uncaptioned)} image(s) have no caption in {where} "
                           f"(first: {uncaptioned[0]}); every training image needs one")
    if not records:
        raise DatasetError(f"{root}: no images found ({', '.join(sorted(IMAGE_EXTS))})")
    return records


@hookimpl
def register_datasets(register):
    register("cub", load_cub)
    register("coco", load_coco)
    register("celeba", load_celeba)
    register("folder", load_folder)

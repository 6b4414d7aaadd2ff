"""Dataset stages on tiny fake trees in their official layouts, and the sampling."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr_cli.plugins.registry import registry
from clipsr_cli.train.data import ResumableSampler, SRDataset, downsample, to_tensor
from stages.data.datasets import DatasetError, bird_box, load_celeba, load_coco, load_cub, load_folder


def _jpg(path, size=(60, 40), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_cub(root):
    """CUB_200_2011 + text/ + Reed et al.'s class split, 3 classes x 2 images."""
    cub = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, boxes = [], []
    n = 0
    for c in classes:
        for j in range(2):
            n += 1
            rel = f"{c}/{c[4:]}_{j:04d}_{n}.jpg"
            _jpg(cub / "images" / rel, seed=n)
            images.append(f"{n} {rel}")
            boxes.append(f"{n} 10.0 5.0 20.0 30.0")
            text = root / "text" / rel.replace(".jpg", ".txt")
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("\n".join(f"bird {n} caption {k}" for k in range(10)) + "\n")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "trainvalclasses.txt").write_text("\n".join(classes[:2]) + "\n")
    (root / "testclasses.txt").write_text(classes[2] + "\n")


def test_datasets_are_registered_stages():
    assert {"cub", "coco", "celeba", "folder"} <= set(registry("dataset"))


def test_cub_class_disjoint_split_captions_and_bird_crop(tmp_path):
    make_cub(tmp_path)
    train, test = load_cub(tmp_path, "train"), load_cub(tmp_path, "test")
    assert len(train) == 4 and len(test) == 2
    train_classes = {r.path.parent.name for r in train}
    assert train_classes == {"001.Black_footed_Albatross", "002.Laysan_Albatross"}
    assert {r.path.parent.name for r in test}.isdisjoint(train_classes)
    assert len(train[0].captions) == 10 and train[0].captions[0] == "bird 1 caption 0"
    # box (x=10, y=5, w=20, h=30): r = 0.75 * 30 = 22, centre (20, 20) -> clipped to the 60x40 image
    assert train[0].box == (0, 0, 42, 40)
    assert bird_box((100, 100, 40, 20), 1000, 1000) == (90, 80, 150, 140)


def test_incomplete_cub_says_what_is_missing(tmp_path):
    make_cub(tmp_path)
    (tmp_path / "testclasses.txt").unlink()
    with pytest.raises(DatasetError, match="missing testclasses.txt.*expected layout"):
        load_cub(tmp_path, "train")
    make_cub(tmp_path)
    next((tmp_path / "text").rglob("*.txt")).unlink()
    with pytest.raises(DatasetError, match="caption file .* is missing"):
        load_cub(tmp_path, "train")


def test_coco_2014_layout(tmp_path):
    for part, ids in (("train2014", [1, 2]), ("val2014", [3])):
        images = []
        for i in ids:
            name = f"COCO_{part}_{i:012d}.jpg"
            _jpg(tmp_path / part / name, seed=i)
            images.append({"id": i, "file_name": name})
        anns = [{"image_id": i, "id": 10 * i + k, "caption": f" image {i} caption {k} "} for i in ids for k in range(5)]
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"captions_{part}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    train, val = load_coco(tmp_path, "train"), load_coco(tmp_path, "test")
    assert [r.path.name for r in train] == ["COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"]
    assert train[1].captions == tuple(f"image 2 caption {k}" for k in range(5))
    assert len(val) == 1
    (tmp_path / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(DatasetError, match="annotations/captions_val2014.json"):
        load_coco(tmp_path, "test")


def test_celeba_caption_folder_and_split(tmp_path):
    for i in range(20):
        _jpg(tmp_path / "CelebA-HQ-img" / f"{i}.jpg", size=(16, 16), seed=i)
        (tmp_path / "celeba-caption").mkdir(exist_ok=True)
        (tmp_path / "celeba-caption" / f"{i}.txt").write_text(f"face {i} a\nface {i} b\n")
    train, test = load_celeba(tmp_path, "train"), load_celeba(tmp_path, "test")
    assert [r.path.stem for r in test] == ["18", "19"]  # numeric order, last 10%
    assert len(train) == 18 and train[2].captions == ("face 2 a", "face 2 b")
    (tmp_path / "test.txt").write_text("3.jpg\n5.jpg\n")
    assert [r.path.stem for r in load_celeba(tmp_path, "test")] == ["3", "5"]
    (tmp_path / "celeba-caption" / "7.txt").unlink()
    with pytest.raises(DatasetError, match="7.txt: caption file of 7.jpg is missing"):
        load_celeba(tmp_path, "train")


def test_folder_with_captions_file_or_sidecars(tmp_path):
    _jpg(tmp_path / "a.jpg")
    _jpg(tmp_path / "sub" / "b.jpg")
    (tmp_path / "caps.json").write_text(json.dumps({"a.jpg": ["one", "two"], "sub/b.jpg": "three"}))
    records = load_folder(tmp_path, "train", str(tmp_path / "caps.json"))
    assert [r.captions for r in records] == [("one", "two"), ("three",)]
    (tmp_path / "a.txt").write_text("side a\n")
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no caption.*sub/b.jpg"):
        load_folder(tmp_path, "train")


def test_sample_is_a_crop_with_its_bicubic_lr_and_is_reproducible(tmp_path):
    _jpg(tmp_path / "a.jpg", size=(80, 50))
    (tmp_path / "a.txt").write_text("first\nsecond\n")
    records = load_folder(tmp_path, "train")
    ds = SRDataset(records, hr_crop=32, scale=4, seed=3)
    s = ds[(0, 0)]
    assert s.hr.shape == (3, 32, 32) and s.lr.shape == (3, 8, 8)
    hr_img = Image.fromarray((s.hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    assert torch.equal(s.lr, to_tensor(downsample(hr_img, 4)))
    again = ds[(0, 0)]
    assert torch.equal(s.hr, again.hr) and s.caption == again.caption
    crops = {ds[(epoch, 0)].hr.sum().item() for epoch in range(6)}
    assert len(crops) > 1  # another epoch, another crop
    assert {ds[(e, 0)].caption for e in range(12)} == {"first", "second"}


def test_small_images_are_enlarged_to_the_crop(tmp_path):
    _jpg(tmp_path / "a.jpg", size=(20, 12))
    (tmp_path / "a.txt").write_text("x\n")
    s = SRDataset(load_folder(tmp_path, "train"), hr_crop=32, scale=4)[(0, 0)]
    assert s.hr.shape == (3, 32, 32)


def test_hr_rescale_shows_the_photo_smaller_and_stays_reproducible(tmp_path):
    ramp = np.tile(np.arange(128, dtype=np.uint8) * 2, (128, 1))  # 2 levels a pixel, left to right
    Image.fromarray(np.stack([ramp] * 3, -1)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("x\n")
    records = load_folder(tmp_path, "train")

    def slope(ds, key):  # levels per pixel along x of the HR crop, in its middle rows and columns
        hr = ds[key].hr[0, 8:24, 8:24].numpy() * 255
        return float(np.diff(hr, axis=1).mean())

    plain = SRDataset(records, hr_crop=32, scale=4, hflip=False)
    half = SRDataset(records, hr_crop=32, scale=4, hflip=False, hr_rescale=(0.5, 0.5))
    assert slope(plain, (0, 0)) == pytest.approx(2.0, abs=0.05)
    assert slope(half, (0, 0)) == pytest.approx(4.0, abs=0.1)  # half the size: twice the slope
    ranged = SRDataset(records, hr_crop=32, scale=4, hflip=False, hr_rescale=(0.4, 1.0))
    slopes = [slope(ranged, (e, 0)) for e in range(12)]
    assert 2.0 - 0.1 < min(slopes) < max(slopes) < 5.0 + 0.1 and max(slopes) - min(slopes) > 0.5
    assert torch.equal(ranged[(3, 0)].hr, ranged[(3, 0)].hr) and ranged[(3, 0)].lr.shape == (3, 8, 8)


def test_sampler_ranks_are_disjoint_and_resume_mid_epoch():
    full = list(ResumableSampler(50, batch_size=4, seed=1))
    assert len(full) == 48 and len({i for _, i in full}) == 48  # the incomplete tail is dropped
    ranks = [list(ResumableSampler(50, 4, 1, rank=r, world=2)) for r in range(2)]
    assert {i for _, i in ranks[0]}.isdisjoint({i for _, i in ranks[1]})
    assert len(ranks[0]) == len(ranks[1]) == 24
    # world=2 with batch b covers what world=1 with batch 2b covers, step by step
    assert sorted(ranks[0][:4] + ranks[1][:4]) == sorted(list(ResumableSampler(50, 8, 1))[:8])
    s = ResumableSampler(50, 4, 1)
    s.set_position(epoch=0, start=5)
    assert list(s) == full[20:]
    s.set_position(epoch=1, start=0)
    assert [i for _, i in s] != [i for _, i in full] and all(e == 1 for e, _ in s)

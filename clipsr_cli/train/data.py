"""Training samples and their order, both reproducible from (seed, epoch, index).

Every random choice a sample needs (crop, flip, caption) comes from a generator
seeded by (seed, epoch, index), and the order of an epoch from (seed, epoch): a
resumed run sees exactly the samples an uninterrupted run would have seen,
whatever the number of data workers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from clipsr_cli.errors import UserError
from clipsr_cli.plugins.protocols import Record
from clipsr_cli.train.sharpen import unsharp_mask

# Words a horizontal flip turns into their mirror image, both ways.
MIRRORED_WORDS = {
    "left": "right", "leftward": "rightward", "leftwards": "rightwards", "leftmost": "rightmost",
    "rising": "falling", "ascending": "descending", "clockwise": "counterclockwise",
    "anticlockwise": "clockwise", "east": "west", "eastward": "westward", "northeast": "northwest",
    "southeast": "southwest",
}
_MIRROR = {**MIRRORED_WORDS, **{v: k for k, v in MIRRORED_WORDS.items() if k != "anticlockwise"}}
_MIRROR_RE = re.compile(r"\b(" + "|".join(sorted(_MIRROR, key=len, reverse=True)) + r")\b|[/\\]", re.IGNORECASE)
# Writing reads backwards in a mirror: no rewrite makes such a caption true again.
_WRITING_RE = re.compile(r"\b(text|letters?|words?|written|writing|reads|says|digits?|numbers?|logo)\b", re.IGNORECASE)


def mirror_caption(caption: str) -> str | None:
    """The caption of the horizontally flipped image: left/right, rising/falling,
    clockwise, east/west and '/' '\\' swapped (case kept); None where no rewrite
    can make it true (it names writing, which a mirror reverses)."""
    if _WRITING_RE.search(caption):
        return None

    def swap(m: re.Match) -> str:
        word = m.group(0)
        if word in "/\\":
            return "\\" if word == "/" else "/"
        new = _MIRROR[word.lower()]
        return new.upper() if word.isupper() and len(word) > 1 else new.capitalize() if word[0].isupper() else new

    return _MIRROR_RE.sub(swap, caption)


def to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> an 8-bit RGB image."""
    return Image.fromarray((t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def downsample(hr: Image.Image, scale: int) -> Image.Image:
    """LR by bicubic downsampling; PIL's bicubic widens its kernel by the factor
    when shrinking (antialiased, as MATLAB's imresize)."""
    return hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)


class DataError(UserError, ValueError):
    """Training or validation images that cannot be used."""


def check_readable(records: list[Record], what: str = "training") -> None:
    """Every image opened and verified before the run writes anything: one bad
    file found at step 40,000 would otherwise end the run there, with a traceback
    from a loader worker.  All of them are named at once."""
    bad = []
    for rec in records:
        try:
            with Image.open(rec.path) as im:
                im.verify()  # PNG: every chunk's CRC; others: the header and structure
        except Exception as e:  # PIL raises many kinds for a bad file
            bad.append(f"{rec.path} ({e or type(e).__name__})")
    if bad:
        raise DataError(f"{len(bad)} of the {len(records)} {what} images cannot be read: {'; '.join(bad[:3])}"
                        f"{'; ...' if len(bad) > 3 else ''}; fix or remove them (nothing was written)")


def open_rgb(record: Record) -> Image.Image:
    with Image.open(record.path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    return im.crop(record.box) if record.box else im


@dataclass
class Sample:
    hr: torch.Tensor
    lr: torch.Tensor
    caption: str
    index: int


class SRDataset(Dataset):
    """(HR crop, bicubic LR, one random caption) per record."""

    def __init__(self, records: list[Record], hr_crop: int, scale: int, seed: int = 0,
                 hflip: bool = True, cache: bool = False, caption_dropout: float = 0.0, degradation=None,
                 sharpen: float = 0.0, hr_rescale: tuple[float, float] = (1.0, 1.0)):
        if hr_crop % scale:
            raise ValueError(f"hr_crop {hr_crop} is not a multiple of scale {scale}")
        self.records = records
        self.hr_crop, self.scale, self.seed, self.hflip = hr_crop, scale, seed, hflip
        self.caption_dropout = caption_dropout
        self.degradation = degradation  # a registered Degradation; None: bicubic (PIL), the paper's
        self.sharpen = sharpen  # weight of the HR's unsharp mask, applied before the LR is made (train/sharpen.py)
        self.hr_rescale = hr_rescale  # the photo's scale drawn from this range before cropping
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def possible_captions(self) -> set[str]:
        """Every caption a sample can carry: the records', their mirrored forms
        where flips are on, and the empty one of caption dropout."""
        captions = {c for r in self.records for c in r.captions}
        if self.hflip:
            captions |= {m for c in captions if (m := mirror_caption(c)) is not None}
        if self.caption_dropout:
            captions.add("")
        return captions

    def _image(self, index: int) -> Image.Image:
        if self._cache is None:
            return open_rgb(self.records[index])
        if index not in self._cache:
            self._cache[index] = open_rgb(self.records[index])
        return self._cache[index]

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        """`key` = (epoch, index), as ResumableSampler yields them."""
        epoch, index = key
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        im = self._image(index)
        c = self.hr_crop
        if min(im.size) < c:  # too small for the crop: enlarge, keeping the aspect ratio
            f = c / min(im.size)
            im = im.resize((max(c, round(im.width * f)), max(c, round(im.height * f))), Image.BICUBIC)
        window = c
        if self.hr_rescale != (1.0, 1.0):
            # the crop of a photo shown at scale f: a window of c / f pixels resized to c, which is
            # what cropping the whole resized photo gives, at the cost of one small resize
            window = min(min(im.size), max(1, round(c / rng.uniform(*self.hr_rescale))))
        x, y = rng.randint(0, im.width - window), rng.randint(0, im.height - window)
        hr = im.crop((x, y, x + window, y + window))
        if window != c:
            hr = hr.resize((c, c), Image.BICUBIC)
        flip = self.hflip and rng.random() < 0.5
        caption = rng.choice(self.records[index].captions)
        if flip and (mirrored := mirror_caption(caption)) is not None:
            # the caption rewritten with the image, so a flip never makes it false
            hr, caption = hr.transpose(Image.FLIP_LEFT_RIGHT), mirrored
        if self.caption_dropout and rng.random() < self.caption_dropout:
            caption = ""  # so that an image upscaled without a caption gets the caption-free estimate
        hr_t = to_tensor(hr)
        if self.sharpen:
            hr_t = unsharp_mask(hr_t, amount=self.sharpen)
            if self.degradation is None:  # the LR from the sharpened HR, as PIL's bicubic makes it
                return Sample(hr_t, to_tensor(downsample(to_image(hr_t), self.scale)), caption, index)
        if self.degradation is None:
            return Sample(hr_t, to_tensor(downsample(hr, self.scale)), caption, index)
        # its random choices from (seed, epoch, index) too: a resumed run draws the same LR
        lr = self.degradation(hr_t, self.scale, np.random.default_rng([self.seed, epoch, index]))
        return Sample(hr_t, lr, caption, index)


def collate(samples: list[Sample]) -> dict:
    return {
        "hr": torch.stack([s.hr for s in samples]),
        "lr": torch.stack([s.lr for s in samples]),
        "captions": [s.caption for s in samples],
        "index": torch.tensor([s.index for s in samples]),
    }


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class ResumableSampler(Sampler[tuple[int, int]]):
    """The epoch's permutation, this rank's share of it, from batch `start` on.

    Each rank takes every world-th full batch-sized slice, so ranks see
    disjoint samples and an epoch has the same number of steps on every rank
    (the incomplete tail is dropped, as drop_last does).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0

    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        b, w = self.batch_size, self.world
        for step in range(self.start, self.steps_per_epoch()):
            first = (step * w + self.rank) * b
            for index in order[first : first + b]:
                yield self.epoch, index

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start) * self.batch_size


# --- validation images ------------------------------------------------------------
def val_pair(rec: Record, scale: int, degradation=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR cropped to a multiple of the scale, its LR): bicubic as the SR benchmarks
    make it, or the training degradation drawn once from `seed`, the same at every
    validation, so the curve compares like with like."""
    im = open_rgb(rec)
    im = im.crop((0, 0, im.width - im.width % scale, im.height - im.height % scale))
    if degradation is None:
        return to_tensor(im), to_tensor(downsample(im, scale))
    hr = to_tensor(im)
    return hr, degradation(hr, scale, np.random.default_rng([seed, VALIDATION_EPOCH]))


@dataclass
class ValImage:
    """A validation image, decoded once per run: HR, its bicubic LR, PIL bicubic
    back up to HR size (the bar to beat), and the first caption."""

    hr: torch.Tensor
    lr: torch.Tensor
    bicubic: torch.Tensor
    caption: str


VALIDATION_EPOCH = 2**31 - 1  # a stream of random choices no training epoch uses


def load_validation(records: list[Record], scale: int, degradation=None, seed: int = 0) -> list[ValImage]:
    images = []
    for i, rec in enumerate(records):
        hr, lr = val_pair(rec, scale, degradation, seed + i)
        lr_im = Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        bicubic = to_tensor(lr_im.resize((hr.shape[2], hr.shape[1]), Image.BICUBIC))
        images.append(ValImage(hr, lr, bicubic, rec.captions[0]))
    return images

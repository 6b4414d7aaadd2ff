"""Scoring a folder of SR results: pairing with references, per-image metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipsr_cli.io.captions import unique_stems
from clipsr_cli.io.images import ImageError, image_files, load_image

_CAPTION_TAG = re.compile(r"_c\d+$")  # upscale's one-output-per-caption names


@dataclass
class Pairing:
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)  # SR files with no reference
    missing: list[Path] = field(default_factory=list)  # references with no SR file


def _index(folder: Path) -> dict[str, Path]:
    """Images under `folder` (hidden ones left out, as upscale leaves them) by relative path without extension."""
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in image_files(folder)}


def _candidates(key: str, suffix: str) -> list[str]:
    keys = [key]
    if suffix and key.endswith(suffix):
        keys.append(key[: -len(suffix)])
    for k in list(keys):
        stripped = _CAPTION_TAG.sub("", k)
        if stripped != k:
            keys.append(stripped)
            if suffix and stripped.endswith(suffix):
                keys.append(stripped[: -len(suffix)])
    return keys


def pair_folders(sr_dir: Path, ref_dir: Path | None, suffix: str = "") -> Pairing:
    """Pair by relative path and stem (extension free), recognising the
    `--suffix` and `_c<i>` names that `upscale` writes; never by sorted order.
    Without a reference folder every SR image stands alone (no-reference metrics)."""
    srs = _index(sr_dir)
    if ref_dir is None:
        return Pairing(pairs=[(p, None) for p in srs.values()])
    refs = _index(ref_dir)
    result, used = Pairing(), set()
    for key, sr in srs.items():
        match = next((k for k in _candidates(key, suffix) if k in refs), None)
        if match is None:
            result.extra.append(sr)
        else:
            result.pairs.append((sr, refs[match]))
            used.add(match)
    result.missing = [p for k, p in refs.items() if k not in used]
    return result


def _size_fix(sr_size, ref_size) -> str:
    """What to do about an SR image and its reference differing in size."""
    (h, w), (rh, rw) = sr_size, ref_size
    if h % rh == 0 and w % rw == 0 and h // rh == w // rw > 1:  # the upscale's input given as reference
        return f"it is x{h // rh} its reference: give the HR images as --ref, not the LR inputs"
    return "pass --crop-to-common to compare the common area"


def load_pair(sr: Path, ref: Path | None, crop_to_common: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    a = load_image(sr).rgb
    if ref is None:
        return a, None
    b = load_image(ref).rgb
    if a.shape != b.shape:
        if not crop_to_common:
            raise ImageError(f"{sr}: size {a.shape[2]}x{a.shape[1]} differs from reference {ref} "
                             f"({b.shape[2]}x{b.shape[1]}); {_size_fix(a.shape[1:], b.shape[1:])}")
        h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
        a, b = a[:, :h, :w], b[:, :h, :w]
    return a, b


def caption_lookup(table: dict[str, list[str]], sr_dir: Path, suffix: str):
    """Captions of an SR file: its caption-file key (extension free, upscale's
    suffix stripped; or the one key in any folder with its file stem, as
    upscale finds them); an `_c<i>` output is scored against caption i."""
    by_stem = {str(Path(k).with_suffix("")): v for k, v in table.items()}
    by_stem |= {stem: table[k] for stem, k in unique_stems(table).items() if stem not in by_stem}

    def get(sr: Path) -> list[str] | None:
        key = sr.relative_to(sr_dir).with_suffix("").as_posix()
        for k in _candidates(key, suffix):
            if k in by_stem:
                caps = by_stem[k]
                tag = _CAPTION_TAG.search(key)
                i = int(tag.group()[2:]) if tag else None
                return [caps[i]] if i is not None and i < len(caps) and k != key else caps
        return None

    return get



def score_image(sr_img: torch.Tensor, hr_img: torch.Tensor | None, metrics: list, crop_border: int,
                captions: list[str] | None, on_unavailable) -> dict[str, float]:
    """Every metric of one image; those that need captions are left out
    when it has none.  A metric whose weights cannot be had is reported
    through on_unavailable(metric, error) and removed from `metrics`, so the
    others go on; ValueError (e.g. too small for NIQE) propagates."""
    from clipsr_cli.model.weights import WeightsError

    values = {}
    for m in [m for m in metrics if not m.set_level]:
        if m.needs_captions and captions is None:
            continue
        try:
            if m.needs_captions:
                values[m.name] = float(m.fn(sr_img[None], [captions])[0])
            else:
                values[m.name] = float(m.fn(sr_img[None], None if hr_img is None else hr_img[None], crop_border)[0])
        except WeightsError as e:
            on_unavailable(m, e)
            metrics.remove(m)
    return values


class SetLevelScores:
    """Set-level metrics (FID): features of every SR and reference image, one
    value per folder at the end."""

    def __init__(self, metrics: list, on_unavailable):
        self.metrics = [m for m in metrics if m.set_level]
        self.on_unavailable = on_unavailable
        self.features = {m.name: ([], []) for m in self.metrics}

    def add(self, sr_img: torch.Tensor, hr_img: torch.Tensor) -> None:
        from clipsr_cli.model.weights import WeightsError

        for m in list(self.metrics):
            try:
                self.features[m.name][0].append(m.features(sr_img[None]))
                self.features[m.name][1].append(m.features(hr_img[None]))
            except WeightsError as e:
                self.on_unavailable(m, e)
                self.metrics.remove(m)

    def results(self) -> dict[str, float]:
        out = {}
        for m in self.metrics:
            try:
                out[m.name] = m.fn(*self.features[m.name])
            except ValueError as e:  # e.g. fewer than 2 images
                self.on_unavailable(m, e)
        return out

"""Scoring a folder of SR results: pairing with references, per-image metrics."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipsr_cli.io.captions import CaptionTable
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


def caption_lookup(table: CaptionTable, sr_dir: Path, suffix: str):
    """Captions of an SR file, found as upscale found its input's (`CaptionTable`),
    with upscale's suffix stripped; an `_c<i>` output is scored against caption i."""

    def get(sr: Path) -> list[str] | None:
        key = sr.relative_to(sr_dir).with_suffix("").as_posix()
        for k in _candidates(key, suffix):
            caps = table.lookup(k + sr.suffix)
            if caps is not None:
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

    h, w = sr_img.shape[-2:]
    if min(h, w) <= 2 * crop_border:  # every metric would average over nothing
        raise ValueError(f"crop border {crop_border} leaves nothing of its {w}x{h} pixels; "
                         "lower --crop-border (or --scale)")
    values = {}
    for m in [m for m in metrics if not m.set_level]:
        if m.needs_captions and captions is None:
            continue
        try:
            ref = None if hr_img is None else hr_img[None]
            value = float(m(sr_img[None], ref, crop_border, None if captions is None else [captions])[0])
        except WeightsError as e:
            on_unavailable(m, e)
            metrics.remove(m)
            continue
        if math.isnan(value):
            raise ValueError(f"{m.name} is undefined for this image (NaN)")
        values[m.name] = value
    return values


def undefined_values(row: dict) -> dict[str, str]:
    """The row's non-finite metric values, each with why: written as null plus
    this reason in --json (strict JSON has no Infinity), said in the table too."""
    return {k: "identical to its reference: infinite" if v > 0 else "minus infinity"
            for k, v in row.items() if isinstance(v, float) and math.isinf(v)}


class SetLevelScores:
    """Set-level metrics (FID): per-image statistics of every SR / reference
    pair, reduced to one value per folder at the end."""

    def __init__(self, metrics: list, on_unavailable):
        self.metrics = [m for m in metrics if m.set_level]
        self.on_unavailable = on_unavailable
        self.stats: dict[str, list[torch.Tensor]] = {m.name: [] for m in self.metrics}

    def add(self, sr_img: torch.Tensor, hr_img: torch.Tensor) -> None:
        from clipsr_cli.model.weights import WeightsError

        for m in list(self.metrics):
            try:
                self.stats[m.name].append(m(sr_img[None], hr_img[None]))
            except WeightsError as e:
                self.on_unavailable(m, e)
                self.metrics.remove(m)

    def results(self) -> dict[str, float]:
        out = {}
        for m in self.metrics:
            try:
                out[m.name] = m.reduce(self.stats[m.name])
            except ValueError as e:  # e.g. fewer than 2 images
                self.on_unavailable(m, e)
        return out


@dataclass
class FolderScores:
    """What scoring a folder found: per-image rows, folder-level values, the
    images that failed and the metrics that could not run (with why)."""

    rows: list[dict] = field(default_factory=list)
    folder_values: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    panels: dict[str, dict] = field(default_factory=dict)  # image -> report figures, with --report
    bicubic: dict[str, dict] = field(default_factory=dict)  # image -> bicubic's metrics, with --report


class FolderScoring:
    """Scores every pair of a `Pairing` with the chosen metrics; `warn(text)` is
    told of metrics that cannot run and images without captions."""

    def __init__(self, metrics: list, crop_border: int, caption_of=None, crop_to_common: bool = False,
                 report_scale: int | None = None, warn=print):
        self.metrics, self.crop_border, self.caption_of = list(metrics), crop_border, caption_of
        self.crop_to_common, self.report_scale, self.warn = crop_to_common, report_scale, warn
        self.result = FolderScores()
        self.boxes: dict[str, tuple[int, int, int]] = {}  # input -> its report crop
        self.set_level = SetLevelScores(self.metrics, self._unavailable)

    def _unavailable(self, m, e) -> None:
        self.result.unavailable[m.name] = str(e)
        self.warn(f"[yellow]skipped {m.name}:[/yellow] {e}")

    def run(self, sr_dir: Path, pairs: list[tuple[Path, Path | None]]) -> FolderScores:
        from clipsr_cli.pipeline.prefetch import prefetch

        for (sr, hr), loaded in prefetch(lambda pair: load_pair(*pair, self.crop_to_common), pairs):
            if isinstance(loaded, ImageError):
                self.result.failed.append((sr, str(loaded)))
            elif isinstance(loaded, Exception):
                raise loaded
            else:
                self.add(sr_dir, sr, hr, *loaded)
        self.result.folder_values = self.set_level.results()
        return self.result

    def add(self, sr_dir: Path, sr: Path, hr: Path | None, a: torch.Tensor, b: torch.Tensor | None) -> None:
        row = {"image": str(sr.relative_to(sr_dir)), "reference": str(hr) if hr else ""}
        captions = self.caption_of(sr) if self.caption_of else None
        if self.caption_of and captions is None:
            self.warn(f"[yellow]no caption:[/yellow] {sr}: "
                      f"{', '.join(m.name for m in self.metrics if m.needs_captions)} left out for it")
        try:
            row.update(score_image(a, b, self.metrics, self.crop_border, captions, self._unavailable))
            if b is not None:
                self.set_level.add(a, b)
        except ValueError as e:  # e.g. an image too small for NIQE's blocks
            self.result.failed.append((sr, f"{sr}: {e}"))
            return
        self.result.rows.append(row)
        if self.report_scale is not None:
            self.add_to_report(row, a, b, captions)

    def add_to_report(self, row: dict, a: torch.Tensor, b: torch.Tensor | None, captions) -> None:
        """The report's figures of one output, with its caption and scores under it
        (its input's other outputs share the crop), and bicubic's scores, the bar
        shown beside the SR's."""
        from clipsr_cli.pipeline.report import bicubic_of, input_of, render_panels

        image = row["image"]
        group = input_of(image)
        scores = "  ".join(f"{m.name} {row[m.name]:.4g}" for m in self.metrics if isinstance(row.get(m.name), float))
        figures = render_panels(a, b, self.report_scale, self.boxes.get(group), (" | ".join(captions or []), scores))
        self.boxes.setdefault(group, figures["box"])
        self.result.panels[image] = figures
        if b is not None:
            bicubic = bicubic_of(b, self.report_scale)
            try:
                self.result.bicubic[image] = score_image(bicubic, b, [m for m in self.metrics if not m.needs_captions],
                                                         self.crop_border, None, self._unavailable)
            except ValueError:  # too small for a metric: the SR row says why already
                pass

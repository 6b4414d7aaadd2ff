"""The batch upscaling pipeline: inputs -> captions -> generator -> outputs.

One bad file never stops a run: it is reported and the run goes on.  Outputs
are written atomically, so `--skip-existing` resumes an interrupted run.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from clipsr_cli.captions import Captions
from clipsr_cli.images import IMAGE_EXTS, ImageError, load_image, save_image
from clipsr_cli.prefetch import prefetch

CLIP_MAX_TOKENS = 75  # 77 minus the start and end markers


class UsageError(ValueError):
    pass


DEFAULT_MODELS = {4: "clipsr-default-x4", 8: "clipsr-default-x8"}  # weights manifest names


def default_model(scale: int, weights_dir=None) -> tuple[Path, str]:
    """The bundled model for `scale` and the one-line note that says it is used."""
    from clipsr_cli.weights import get_entry, resolve

    if scale not in DEFAULT_MODELS:
        raise UsageError(f"no bundled model for x{scale} (bundled: "
                         f"{', '.join(f'x{s}' for s in DEFAULT_MODELS)}); pass --weights FILE, "
                         "or --preset NAME to run an untrained preset")
    name = DEFAULT_MODELS[scale]
    path = resolve(name, weights_dir=weights_dir)
    return path, f"no --weights: using the bundled default model {name} ({get_entry(name).description})"


@dataclass
class Report:
    done: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    missing_captions: int = 0


def collect_inputs(spec: str, recursive: bool = False) -> tuple[Path, list[Path]]:
    """(root, images) for a file, a folder or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        return path, files
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=recursive) if Path(p).is_file())
    if not matches:
        raise UsageError(f"{spec}: no such file or folder, and no file matches it as a pattern")
    fixed = []  # the pattern's leading parts without wildcards form the root
    for part in Path(spec).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path("."), matches


def parse_shard(spec: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N."""
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard {spec}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise UsageError(f"--shard {spec}: need 0 <= K < N")
    return k, n


def shard(images: list[Path], root: Path, k: int, n: int) -> list[Path]:
    """Shard K of N by a stable hash of the path relative to the root: N
    processes on N machines cover a folder exactly once, whatever order
    their file systems list it in."""
    import zlib

    return [p for p in images if zlib.crc32(p.relative_to(root).as_posix().encode()) % n == k]


def output_name(rel: Path, suffix: str, ext: str | None, alpha: bool, index: int | None) -> Path:
    """`<stem><suffix>.<ext>`; with several captions per image, `<stem><suffix>_c<i>.<ext>`
    (i counts from 0 in caption order)."""
    ext = ext or ("png" if alpha else rel.suffix.lstrip(".").lower())
    if ext not in ("png", "jpg", "jpeg", "webp"):
        ext = "png"
    tag = f"_c{index}" if index is not None else ""
    return rel.with_name(f"{rel.stem}{suffix}{tag}.{ext}")


class Upscaler:
    """Holds the generator and the per-caption text cache for one run."""

    def __init__(self, gen, device: torch.device, warn: Callable[[str], None] = print,
                 dtype: torch.dtype = torch.float32):
        self.gen = gen.to(device).eval()
        self.device = device
        self.dtype = dtype  # computed under autocast; weights and outputs stay fp32
        self.warn = warn
        self._text: dict[str, object] = {}

    def condition(self, caption: str, image: Path):
        if caption not in self._text:  # each unique caption is encoded once
            if self.gen.text.n_tokens(caption) > CLIP_MAX_TOKENS:
                self.warn(f"{image}: caption longer than CLIP's {CLIP_MAX_TOKENS} tokens was truncated")
            self._text[caption] = self.gen.encode_text([caption])
        return self._text[caption]

    @torch.inference_mode()
    def upscale(self, rgb: torch.Tensor, caption: str, image: Path) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            sr = self.gen(rgb[None].to(self.device), self.condition(caption, image))
        return sr[0].float().clamp(0, 1).cpu()


@dataclass
class _Job:
    image: Path
    captions: list[str]
    targets: Callable[[bool], list[Path]]  # output paths, given whether the image has alpha


def _plan(image: Path, root: Path, out_dir: Path, captions: Captions, inputs: set[Path], suffix: str,
          ext: str | None, skip_existing: bool, report: Report) -> _Job | None:
    """The job for one image, or None after recording why it is not done."""
    caps = captions.get(image)
    if caps is None:
        report.failed.append((image, "no caption (give --captions, a .txt sidecar, or --missing-caption)"))
        report.missing_captions += 1
        return None
    rel = image.relative_to(root) if image.is_relative_to(root) else Path(image.name)

    def targets(alpha: bool) -> list[Path]:
        several = len(caps) > 1
        return [out_dir / output_name(rel, suffix, ext, alpha, i if several else None) for i in range(len(caps))]

    planned = targets(False)  # alpha is known only after decoding
    if any(t.resolve() in inputs for t in planned):
        report.failed.append((image, "output would overwrite an input; choose another -o or a --suffix"))
        return None
    if skip_existing and all(t.exists() for t in planned):
        report.skipped.append((image, "output exists"))
        return None
    return _Job(image, caps, targets)


def run(upscaler: Upscaler, root: Path, images: list[Path], out_dir: Path, captions: Captions,
        suffix: str = "", ext: str | None = None, skip_existing: bool = False,
        progress: Callable[[], None] = lambda: None) -> Report:
    report = Report()
    inputs = {p.resolve() for p in images}
    scale = upscaler.gen.scale
    jobs = []
    for image in images:
        job = _plan(image, root, out_dir, captions, inputs, suffix, ext, skip_existing, report)
        if job is None:
            progress()
        else:
            jobs.append(job)
    # the next images decode in a worker thread while the current one is upscaled
    for job, decoded in prefetch(lambda j: load_image(j.image), jobs):
        image = job.image
        try:
            if isinstance(decoded, Exception):
                raise decoded
            alpha_up, targets = None, job.targets(False)
            if decoded.alpha is not None:
                alpha_up = F.interpolate(decoded.alpha[None], scale_factor=scale, mode="bicubic")[0].clamp(0, 1)
                targets = job.targets(True)
            for caption, target in zip(job.captions, targets):
                sr = upscaler.upscale(decoded.rgb, caption, image)
                save_image(target, sr, alpha_up, decoded.gray, decoded.bits)
                report.done.append((image, target))
        except ImageError as e:
            report.failed.append((image, str(e).removeprefix(f"{image}: ")))
        except (OSError, RuntimeError) as e:
            report.failed.append((image, f"{type(e).__name__}: {e}"))
        finally:
            progress()
    return report

"""Image decoding and encoding: every mode a user's folder may hold, EXIF
orientation applied, alpha kept aside, 16-bit kept 16-bit, writes atomic."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from clipsr_cli.files import atomic_write

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding them


class ImageError(ValueError):
    pass


@dataclass
class Decoded:
    rgb: torch.Tensor  # (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None  # (1, H, W) or None
    gray: bool  # written back as grayscale
    bits: int  # 8 or 16


def load_image(path: Path) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {im.width}x{im.height} exceeds the {MAX_PIXELS} pixel limit "
                                     "(possible decompression bomb); downscale it first")
                im.load()
                im = ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "empty file" if path.stat().st_size == 0 else str(e)
        raise ImageError(f"{path}: not a readable image ({reason}); re-export or remove it") from None
    return _to_tensor(im)


def _to_tensor(im: Image.Image) -> Decoded:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        t = torch.from_numpy(np.clip(arr, 0, 1))[None]
        return Decoded(t.expand(3, -1, -1).contiguous(), None, True, 16)
    alpha = None
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    gray = im.mode in ("L", "LA", "1")
    if im.mode in ("RGBA", "LA", "PA"):
        alpha = torch.from_numpy(np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0)[None]
    rgb = im.convert("RGB")
    t = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    return Decoded(t, alpha, gray, 8)


def _to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None, gray: bool, bits: int) -> Image.Image:
    rgb = rgb.clamp(0, 1)
    if gray:
        luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).numpy()
        if bits == 16:
            return Image.fromarray(np.round(luma * 65535).astype(np.uint16))
        im = Image.fromarray(np.round(luma * 255).astype(np.uint8), "L")
    else:
        arr = np.round(rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        im = Image.fromarray(arr, "RGB")
    if alpha is not None:
        a = Image.fromarray(np.round(alpha.clamp(0, 1)[0].numpy() * 255).astype(np.uint8), "L")
        im = im.convert("LA" if gray else "RGBA")
        im.putalpha(a)
    return im


def save_image(path: Path, rgb: torch.Tensor, alpha=None, gray=False, bits=8) -> None:
    im = _to_pil(rgb.float().cpu(), None if alpha is None else alpha.float().cpu(), gray, bits)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".png": "PNG"}.get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and im.mode in ("RGBA", "LA"):
        im = im.convert("RGB")
    # PNG at zlib level 1 (OpenCV's default, what Real-ESRGAN writes): several times faster
    # to encode than PIL's 6 for files about 10-20% larger; still lossless
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {"compress_level": 1}
    atomic_write(path, lambda tmp: im.save(tmp, format=fmt, **options))

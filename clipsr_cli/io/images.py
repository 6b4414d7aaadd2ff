"""Image decoding and encoding: every mode a user's folder may hold, EXIF
orientation applied, alpha kept aside, 16-bit kept 16-bit, writes atomic."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from clipsr_cli.io.files import atomic_write
from clipsr_cli.io.png import is_png16_color, png16_bytes, write_png

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding them
# written into every output (PNG tEXt "Software", EXIF Software in JPEG / WebP): a
# run finding its own earlier outputs among its inputs tells them from a user's images
SOFTWARE = "clipsr"
_EXIF_SOFTWARE = 0x0131


class ImageError(ValueError):
    def __init__(self, message: str, kind: str = "not a readable image"):
        super().__init__(message)
        self.kind = kind  # what a run's summary counts it as


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files in `folder` (and below), sorted; hidden ones left out
    as a shell glob leaves them: macOS's `._photo.jpg` metadata files, `.thumbnails/`."""
    found = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


@dataclass
class Decoded:
    rgb: torch.Tensor  # (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None  # (1, H, W) or None
    gray: bool  # written back as grayscale
    bits: int  # 8 or 16
    frames: int = 1  # a multi-frame TIFF or animated WebP: only the first is read


def load_image(path: Path) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {im.width}x{im.height} exceeds the {MAX_PIXELS} pixel limit "
                                     "(possible decompression bomb); downscale it first", "over the pixel limit")
                if is_png16_color(im):
                    return _png16_to_tensor(*png16_bytes(path))
                frames = getattr(im, "n_frames", 1)
                ImageOps.exif_transpose(im, in_place=True)  # loads it (a copy when not in place)
                decoded = _to_tensor(im)
                decoded.frames = frames
                return decoded
    except ImageError as e:
        if str(e).startswith(f"{path}: "):
            raise
        raise ImageError(f"{path}: {e}", e.kind) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})", "decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "empty file" if path.stat().st_size == 0 else str(e)
        raise ImageError(f"{path}: not a readable image ({reason}); re-export or remove it") from None


def pil_to_decoded(im: Image.Image) -> Decoded:
    """An image already in memory, decoded as `load_image` decodes a file (EXIF
    orientation applied, alpha kept aside, 16-bit kept 16-bit)."""
    if im.width * im.height > MAX_PIXELS:
        raise ImageError(f"{im.width}x{im.height} exceeds the {MAX_PIXELS} pixel limit; downscale it first",
                         "over the pixel limit")
    return _to_tensor(ImageOps.exif_transpose(im))


def _png16_to_tensor(high: Image.Image, low: Image.Image) -> Decoded:
    """16-bit RGB(A) from its two byte planes, EXIF orientation applied to both."""
    planes = [np.asarray(ImageOps.exif_transpose(p), dtype=np.float32) for p in (high, low)]
    t = torch.from_numpy((planes[0] * 256 + planes[1]) / 65535.0).permute(2, 0, 1)
    alpha = t[3:].contiguous() if t.shape[0] == 4 else None
    return Decoded(t[:3].contiguous(), alpha, False, 16)


def _to_tensor(im: Image.Image) -> Decoded:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        t = torch.from_numpy(_gray_unit(np.asarray(im, dtype=np.float64), im.mode))[None]
        return Decoded(t.expand(3, -1, -1).contiguous(), None, True, 16)
    alpha = None
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    gray = im.mode in ("L", "LA", "1")
    if im.mode in ("RGBA", "LA", "PA"):
        alpha = _unit_float(im.getchannel("A"))
    rgb = im if im.mode == "RGB" else im.convert("RGB")  # convert would copy an RGB image
    return Decoded(_unit_float(rgb), alpha, gray, 8)


def _gray_unit(arr: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float gray image as float32 in [0, 1].
    Integers are 16-bit samples (PIL opens a 16-bit PNG as mode I); floats in
    [0, 1] are taken as they are, larger ones as 8-bit (up to 255) or 16-bit
    (up to 65535) sample values.  Anything else has no sure meaning as a
    picture: refused, never written as garbage."""
    finite = np.isfinite(arr).all()
    low, high = (float(arr.min()), float(arr.max())) if arr.size and finite else (0.0, 0.0)
    if not finite or low < 0 or high > 65535:
        what = "float" if mode == "F" else "32-bit integer"
        found = "non-finite values" if not finite else f"values {low:g} to {high:g}"
        raise ImageError(f"{what} image with {found}, outside the [0, 65535] range of an image's samples; "
                         "convert it to an 8- or 16-bit image first", f"{what} samples out of range")
    top = 65535.0 if mode != "F" or high > 255 else 255.0 if high > 1 else 1.0
    return (arr / top).astype(np.float32)


def _unit_float(im: Image.Image) -> torch.Tensor:
    """An 8-bit image (L or RGB) as (C, H, W) float32 in [0, 1].  Bytes -> uint8
    HWC view -> float CHW in one strided numpy pass, single-threaded: it runs
    beside the forward passes.  1024x800 RGB: 2.3 core-ms, against 3.4 for
    the same pass in torch and 5+ through a float HWC array and a second copy."""
    hwc = np.frombuffer(im.tobytes(), np.uint8).reshape(im.height, im.width, -1)
    chw = np.empty((hwc.shape[2], im.height, im.width), np.float32)
    np.divide(hwc.transpose(2, 0, 1), np.float32(255), out=chw)
    return torch.from_numpy(chw)


def _to_array(rgb: torch.Tensor, alpha: torch.Tensor | None, gray: bool, bits: int,
              consume: bool = False) -> np.ndarray:
    """(H, W, C) uint8 or uint16: L, LA, RGB or RGBA.  In numpy, whose three
    passes here take a third of torch's time for the same work, with at most
    one float temporary (none when `consume` lets rgb's memory be used): the
    output of a large image is hundreds of MB."""
    x = rgb.float().permute(1, 2, 0).numpy()  # a view; contiguous for channels-last outputs
    planes = [x @ np.array([[0.299], [0.587], [0.114]], np.float32)] if gray else [x]
    if alpha is not None:
        planes.append(alpha.float().permute(1, 2, 0).numpy())
    top = 65535 if bits == 16 else 255
    out = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
    out = np.multiply(out, top, out=out if out is not x or consume else None)
    np.clip(out, 0, top, out=out)
    return np.rint(out, out=out).astype(np.uint16 if bits == 16 else np.uint8)


def _format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")


def output_array(path: Path, rgb: torch.Tensor, alpha=None, gray=False, bits=8, consume=False) -> np.ndarray:
    """What `write_image(path, ...)` writes: quantised for the format of `path`
    (16 bits and alpha only where it holds them).  `consume`: rgb is not used
    again and may be overwritten (no float copy: 805 MB for an 8192x8192 output)."""
    keep_alpha, bits = _kept(path, alpha, bits)
    rgb = rgb.cpu()
    if alpha is not None and not keep_alpha:  # JPEG: flattened as a viewer shows it, not alpha dropped
        rgb, consume = over_white(rgb, alpha.cpu(), in_place=consume), True
    return _to_array(rgb, alpha.cpu() if keep_alpha else None, gray, bits, consume)


def over_white(rgb: torch.Tensor, alpha: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """rgb composited over a white background by alpha (both in [0, 1]):
    1 - alpha * (1 - rgb).  Dropping alpha instead would show whatever
    colour the transparent pixels happen to hold (often black or noise)."""
    # in numpy: the network's outputs are inference tensors, which torch leaves unchanged outside inference mode
    x = rgb.numpy() if in_place and rgb.dtype == torch.float32 else rgb.float().numpy().copy()
    np.subtract(x, 1, out=x)
    np.multiply(x, alpha.float().numpy(), out=x)
    np.add(x, 1, out=x)
    return torch.from_numpy(x)


def _kept(path: Path, alpha, bits: int) -> tuple[bool, int]:
    """(alpha kept, bits per sample) in the format of `path`."""
    fmt = _format(path)
    return alpha is not None and holds_alpha(path), bits if fmt == "PNG" else 8


def holds_alpha(path: Path) -> bool:
    """Whether the format of `path` keeps an alpha channel (PNG, WebP: not JPEG)."""
    return _format(path) != "JPEG"


def is_plain_8bit(path: Path, alpha=None, gray=False, bits=8) -> bool:
    """Whether `output_array(path, rgb, ...)` is rgb's 8-bit RGB alone (no
    alpha to add or flatten, no gray or 16 bits): what `upscale.quantise`
    gives on the device."""
    return alpha is None and not gray and _kept(path, alpha, bits) == (False, 8)


def write_image(path: Path, arr: np.ndarray) -> None:
    """Write atomically, marked as clipsr's: PNG by clipsr's encoder (any mode,
    8 or 16 bits), JPEG and WebP by Pillow."""
    fmt = _format(path)
    if fmt == "PNG":
        atomic_write(path, lambda tmp: write_png(tmp, arr, text={"Software": SOFTWARE}))
        return
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    exif = Image.Exif()
    exif[_EXIF_SOFTWARE] = SOFTWARE
    atomic_write(path, lambda tmp: im.save(tmp, format=fmt, quality=95, exif=exif))


def written_by_clipsr(path: Path) -> bool:
    """Whether the image at `path` carries `write_image`'s mark (False for
    anything unreadable).  Reads the header only."""
    try:
        with Image.open(path) as im:
            if im.format == "PNG":  # its getexif() would decode the whole image
                return im.info.get("Software") == SOFTWARE
            return im.getexif().get(_EXIF_SOFTWARE) == SOFTWARE
    except (OSError, SyntaxError, ValueError):
        return False


def save_image(path: Path, rgb: torch.Tensor, alpha=None, gray=False, bits=8) -> None:
    write_image(path, output_array(path, rgb, alpha, gray, bits))

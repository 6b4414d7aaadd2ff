"""Side-by-side timings behind the choices in clipsr_cli/model/kernels.py, png.py and
devices.py, all in one run (best of N each):

* the ViT's linear layers through MKL (F.linear) and through oneDNN (`dense`),
  at batch 1 (66 tokens) and batch 8 (528);
* conv3x3 + PixelShuffle(2) of the paper's upsampler, plain vs channels-last;
* the generator's bicubic residual (a batch of 8, one thread, as in a lane):
  F.interpolate vs `bicubic_upsample`'s two matrix products, by LR side;
* writing a 256x256 output: Pillow's PNG at level 1 vs clipsr's encoder;
* allocating and filling a 134 MB activation map, glibc defaults vs
  `keep_freed_memory` (in two child processes: the setting is process-wide).

    python3 benchmarks/kernels.py
"""

from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def best_ms(fn, repeats: int = 10) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def linear_layers() -> None:
    from clipsr_cli.model.kernels import dense

    print("| ViT layer (tokens x in -> out) | MKL GFLOP/s | oneDNN GFLOP/s |\n|---|---|---|")
    for rows in (66, 528):
        for k, n, name in ((768, 2304, "qkv"), (768, 3072, "mlp in"), (3072, 768, "mlp out")):
            x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
            gflop = 2 * rows * k * n / 1e9
            mkl = gflop / best_ms(lambda: F.linear(x, w, b)) * 1000
            onednn = gflop / best_ms(lambda: dense(x, w, b, min_rows=0)) * 1000
            print(f"| {name} ({rows} x {k} -> {n}) | {mkl:.0f} | {onednn:.0f} |")


def pixel_shuffle() -> None:
    from clipsr_cli.model.kernels import conv_pixel_shuffle

    conv = torch.nn.Conv2d(64, 256, 3, 1, 1)
    x = torch.randn(8, 64, 128, 128)
    with torch.inference_mode():
        plain = best_ms(lambda: F.pixel_shuffle(conv(x), 2), 5)
        conv_cl = conv.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        ours = best_ms(lambda: conv_pixel_shuffle(x_cl, conv_cl, 2), 5)
    print(f"\nconv3x3 64->256 + PixelShuffle(2), 8 x 128x128: plain {plain:.0f} ms, channels-last "
          f"(reordered output channels) {ours:.0f} ms")


def bicubic() -> None:
    from clipsr_cli.model.kernels import bicubic_upsample

    print("\n| bicubic, 8 x 3 x LR^2, one thread | F.interpolate (ms) | two matrix products (ms) |\n|---|---|---|")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for scale, side in ((4, 64), (8, 32), (16, 16), (4, 128), (4, 192)):
        x = torch.rand(8, 3, side, side)
        plain = best_ms(lambda: F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False))
        ours = best_ms(lambda: bicubic_upsample(x, scale))
        print(f"| x{scale}, LR {side} | {plain:.2f} | {ours:.2f} |")
    torch.set_num_threads(threads)


def png_writing() -> None:
    from clipsr_cli.io.png import encode_png

    torch.manual_seed(0)
    lr = torch.rand(1, 3, 32, 32)
    sr = F.interpolate(lr, size=(256, 256), mode="bicubic").clamp(0, 1)[0]
    arr = sr.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    im = Image.fromarray(arr)

    def pil() -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def ours() -> bytes:
        return b"".join(part for piece in encode_png(arr) for part in piece)

    print(f"\n256x256 RGB PNG: Pillow level 1 {best_ms(pil, 30):.2f} ms ({len(pil()) / 1e3:.1f} kB), "
          f"clipsr {best_ms(ours, 30):.2f} ms ({len(ours()) / 1e3:.1f} kB)")


def fill_134mb(keep: bool) -> float:
    from clipsr_cli.pipeline.memory import keep_freed_memory

    if keep:
        keep_freed_memory()

    def once():
        x = torch.empty(8, 64, 256, 256)
        x.fill_(1.0)

    times = []
    for _ in range(8):
        t = time.perf_counter()
        once()
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times[2:]))


def allocator() -> None:
    def child(flag: str) -> float:
        out = subprocess.run([sys.executable, __file__, "--fill", flag], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())

    print(f"\nallocate + fill 134 MB, median of 6: glibc defaults {child('default'):.0f} ms, "
          f"keep_freed_memory {child('keep'):.0f} ms")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--fill":
        print(fill_134mb(sys.argv[2] == "keep"))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU\n")
    linear_layers()
    pixel_shuffle()
    bicubic()
    png_writing()
    allocator()


if __name__ == "__main__":
    main()

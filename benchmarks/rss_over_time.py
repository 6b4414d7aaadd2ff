"""Does a long `clipsr upscale` run hold its memory flat?  Writes N small PNGs,
runs `clipsr upscale` on them in a child process as a user would, samples the
child's resident memory (VmRSS) every --every seconds, and writes the samples
as CSV and the curve as a picture (PIL only).

    python3 benchmarks/rss_over_time.py                       # 20,000 images of 32x32, x4
    python3 benchmarks/rss_over_time.py --images 2000 --out /tmp/rss.png
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_images(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        if (folder / f"{i:06d}.png").exists():
            continue
        small = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)  # smooth, photo-like content
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"{i:06d}.png", compress_level=1)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample(cmd: list[str], every: float) -> list[tuple[float, float, int]]:
    """(seconds, RSS MiB, outputs written) while `cmd` runs."""
    out_dir = Path(cmd[cmd.index("-o") + 1])
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    t0, rows = time.perf_counter(), []
    while child.poll() is None:
        rss = rss_mib(child.pid)
        if rss is not None:
            done = sum(1 for _ in out_dir.glob("*.png")) if out_dir.is_dir() else 0
            rows.append((time.perf_counter() - t0, rss, done))
        time.sleep(every)
    if child.returncode:
        sys.exit(f"clipsr upscale exited with {child.returncode}")
    return rows


def plot(rows: list[tuple[float, float, int]], path: Path, title: str) -> None:
    w, h, pad = 900, 360, 60
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    t_max = max(r[0] for r in rows) or 1.0
    top = max(r[1] for r in rows) * 1.15
    x = lambda t: pad + (w - 2 * pad) * t / t_max  # noqa: E731
    y = lambda m: h - pad - (h - 2 * pad) * m / top  # noqa: E731
    d.line([(pad, pad), (pad, h - pad), (w - pad, h - pad)], fill="black")
    for m in np.linspace(0, top, 5):
        d.text((5, y(m) - 6), f"{m:.0f}", fill="black")
        d.line([(pad, y(m)), (w - pad, y(m))], fill=(225, 225, 225))
    for t in np.linspace(0, t_max, 6):
        d.text((x(t) - 10, h - pad + 8), f"{t:.0f} s", fill="black")
    d.line([(x(t), y(m)) for t, m, _ in rows], fill=(30, 90, 200), width=2)
    d.text((pad, 15), title, fill="black")
    d.text((5, pad - 25), "RSS, MiB", fill="black")
    im.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=32, help="side of each input, pixels")
    p.add_argument("--weights", default="clipsr-default-x4")
    p.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-rss"))
    p.add_argument("--out", type=Path, default=Path("docs/rss_over_time.png"))
    args = p.parse_args()
    inputs, outputs = args.work / f"in-{args.images}-{args.size}", args.work / "out"
    make_images(inputs, args.images, args.size)
    shutil.rmtree(outputs, ignore_errors=True)
    cmd = [sys.executable, "-m", "clipsr_cli", "upscale", str(inputs), "-o", str(outputs), "--weights", args.weights,
           "--caption", "a photo", "-q"]
    rows = sample(cmd, args.every)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        csv.writer(f).writerows([("seconds", "rss_mib", "outputs"), *((f"{t:.1f}", f"{m:.1f}", n) for t, m, n in rows)])
    late = [m for t, m, _ in rows if t > rows[-1][0] * 0.2]
    plot(rows, args.out, f"clipsr upscale, {args.images} images of {args.size}x{args.size}, {args.weights}: "
                         f"resident memory over the run")
    print(f"{len(rows)} samples over {rows[-1][0]:.0f} s; RSS after the first fifth: min {min(late):.0f} MiB, "
          f"max {max(late):.0f} MiB, first {late[0]:.0f}, last {late[-1]:.0f}; peak {max(r[1] for r in rows):.0f} MiB")


if __name__ == "__main__":
    main()

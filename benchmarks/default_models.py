"""The bundled default models against bicubic on Set5 and Set14, through the CLI
a user runs: LR by PIL bicubic downsampling of the HR (cropped to a multiple of
the scale), `clipsr upscale` with the default model and the sr-bench captions,
PIL bicubic as the baseline, `clipsr score` (PSNR / SSIM on Y with crop =
scale, NIQE).

    python3 benchmarks/default_models.py [--scales 4 8] [--work /tmp/clipsr-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCH = SHARED / "data" / "sr-bench"


def clipsr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "clipsr_cli", *args], check=True)


METRICS = ("psnr", "ssim", "niqe")


def score(sr: Path, hr: Path, scale: int) -> list[dict]:
    out = sr.parent / f"{sr.name}.json"
    clipsr("score", str(sr), "--ref", str(hr), "-s", str(scale), "--metrics", ",".join(METRICS),
           "--weights-dir", str(SHARED / "weights"), "--json", str(out))
    return json.loads(out.read_text())["images"]


def mean(rows: list[dict]) -> dict[str, float]:
    return {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scales", nargs="+", type=int, default=[4, 8])
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-bench"))
    args = p.parse_args()
    rows: list[tuple[int, str, str, dict]] = []
    for s in args.scales:
        work = args.work / f"x{s}"
        for name in ("Set5", "Set14"):
            hr_dir, lr_dir, bic_dir = (work / k / name for k in ("hr", "lr", "bicubic"))
            for d in (hr_dir, lr_dir, bic_dir):
                d.mkdir(parents=True, exist_ok=True)
            for path in sorted((BENCH / name).glob("*.png")):
                hr = Image.open(path).convert("RGB")
                hr = hr.crop((0, 0, hr.width - hr.width % s, hr.height - hr.height % s))
                lr = hr.resize((hr.width // s, hr.height // s), Image.BICUBIC)
                hr.save(hr_dir / path.name)
                lr.save(lr_dir / path.name)
                lr.resize(hr.size, Image.BICUBIC).save(bic_dir / path.name)
        # default model, sr-bench captions (keys like "Set5/baby.png", relative to the LR root)
        clipsr("upscale", str(work / "lr"), "-r", "--captions", str(BENCH / "captions.json"), "-s", str(s),
               "-o", str(work / "clipsr"), "-q")
        for method in ("bicubic", "clipsr"):
            per_set = {name: score(work / method / name, work / "hr" / name, s) for name in ("Set5", "Set14")}
            for name, images in per_set.items():
                rows.append((s, name, method, mean(images)))
            rows.append((s, "Set5 + Set14", method, mean(per_set["Set5"] + per_set["Set14"])))
    print("| scale | set | method | PSNR (dB) | SSIM | NIQE (lower is better) |")
    print("|---|---|---|---|---|---|")
    sets = ["Set5", "Set14", "Set5 + Set14"]
    for s, name, method, v in sorted(rows, key=lambda r: (r[0], sets.index(r[1]), r[2])):
        print(f"| x{s} | {name} | {method} | {v['psnr']:.3f} | {v['ssim']:.4f} | {v['niqe']:.3f} |")
    for s in args.scales:
        for name in sets:
            b, c = (next(v for s2, n, m, v in rows if (s2, n, m) == (s, name, k)) for k in ("bicubic", "clipsr"))
            print(f"x{s} {name}: {c['psnr'] - b['psnr']:+.3f} dB over bicubic")


if __name__ == "__main__":
    main()

"""bf16 against fp32 on this CPU: how far the outputs are apart, and the time.

For each bundled model, the examples (as given) and Set5 (its HR bicubic-
downsampled by the model's scale) through `clipsr_cli.api.load_model(...,
precision=...)` in bf16 and in fp32, the PSNR of the bf16 output against the
fp32 output (8-bit, all channels, whole image) and the forward time of each
side by side in one process.  On a CPU without AMX or AVX512-BF16 bf16 is
emulated and slow: the times say so; the PSNR is the same on any CPU.

    python3 benchmarks/bf16_cpu.py                       # needs ../shared for Set5
    python3 benchmarks/bf16_cpu.py --models clipsr-default-x4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SET5 = ROOT.parent / "shared" / "data" / "sr-bench" / "Set5"
MODELS = ("clipsr-default-x4", "clipsr-default-x8", "clipsr-default-real-x4", "clipsr-demo-x8")


def inputs(scale: int) -> list[tuple[str, Image.Image, str]]:
    """(name, LR, caption): the examples, and Set5 downsampled by `scale` where ../shared has it."""
    caps = json.loads((ROOT / "examples" / "captions.json").read_text())
    out = [(p.name, Image.open(p).convert("RGB"), first(caps.get(p.name, ""))) for p in sorted((ROOT / "examples").iterdir())
           if p.suffix in (".png", ".jpg")]
    if SET5.is_dir():
        set5_caps = json.loads((SET5.parent / "captions.json").read_text())
        for p in sorted(SET5.glob("*.png")):
            hr = Image.open(p).convert("RGB")
            w, h = hr.width // scale * scale, hr.height // scale * scale
            lr = hr.crop((0, 0, w, h)).resize((w // scale, h // scale), Image.BICUBIC)
            out.append((f"Set5/{p.name}", lr, first(set5_caps.get(f"Set5/{p.name}", ""))))
    return out


def first(caption: str | list[str]) -> str:
    return caption if isinstance(caption, str) else caption[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    args = p.parse_args()
    import torch

    from clipsr_cli.api import load_model
    from clipsr_cli.pipeline.devices import choose_precision

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; unset --precision here: "
          f"{choose_precision(None, torch.device('cpu'))}")
    print("| model | input | PSNR bf16 vs fp32 (dB) | fp32 s | bf16 s |")
    print("|---|---|---|---|---|")
    for name in args.models:
        fp32, bf16 = (load_model(name, device="cpu", precision=p) for p in ("fp32", "bf16"))
        worst = math.inf
        for image, lr, caption in inputs(fp32.scale):
            outs, secs = [], []
            for model in (fp32, bf16):
                t = time.perf_counter()
                outs.append(np.asarray(model.upscale(lr, caption)))
                secs.append(time.perf_counter() - t)
            db = psnr(*outs)
            worst = min(worst, db)
            print(f"| {name} | {image} | {db:.1f} | {secs[0]:.2f} | {secs[1]:.2f} |", flush=True)
        print(f"| {name} | **lowest** | **{worst:.1f}** | | |")


if __name__ == "__main__":
    main()

"""Forward time per image of the generator on this machine (random weights:
timing does not depend on their values), batch 1 and 8, per preset and scale.

    python3 benchmarks/forward.py --presets tiny paper --scales 4 8 16
"""

from __future__ import annotations

import argparse
import time

import torch

from clipsr_cli.clip import build_clip
from clipsr_cli.config import load_preset
from clipsr_cli.network import Generator


def seconds_per_image(gen, batch: int, lr_size: int, repeats: int) -> float:
    lr = torch.rand(batch, 3, lr_size, lr_size)
    cond = gen.encode_text(["a small bird with a red head"] * batch)
    with torch.inference_mode():
        gen(lr, cond)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            gen(lr, cond)
            best = min(best, time.perf_counter() - t)
    return best / batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--scales", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
    print("| preset | scale | LR -> SR | batch | ms / image |")
    print("|---|---|---|---|---|")
    for name in args.presets:
        cfg = load_preset(name)
        clip = build_clip(cfg)
        for scale in args.scales:
            gen = Generator(cfg, clip, scale).eval()
            lr_size = cfg.generator.hr_crop // scale
            for batch in args.batches:
                ms = 1000 * seconds_per_image(gen, batch, lr_size, args.repeats)
                print(f"| {name} | x{scale} | {lr_size} -> {lr_size * scale} | {batch} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()

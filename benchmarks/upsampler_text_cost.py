"""Forward cost of `upsampler_text` (the caption modulating each upsampling step):
the tiny preset with and without it, side by side in one process, batch 8,
64 px LR, fp32 on the CPU, median of 15 alternating rounds.

    python3 benchmarks/upsampler_text_cost.py
"""
import dataclasses
import statistics
import time

import torch

from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.config import load_preset
from clipsr_cli.model.generator import Generator

torch.manual_seed(0)
cfg = load_preset("tiny")
off = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, upsampler_text=False))
clip = load_clip(cfg)
res = {}
for scale in (4, 8):
    gens = {"upsampler_text": Generator(cfg, clip, scale).eval(), "without": Generator(off, clip, scale).eval()}
    lr = torch.rand(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    times = {k: [] for k in gens}
    with torch.inference_mode():
        conds = {k: g.text(g.text.encode(["a bird"] * 8)) for k, g in gens.items()}
        for _ in range(3):
            for k, g in gens.items():
                g(lr, conds[k])
        for _ in range(15):
            for k, g in gens.items():
                t = time.perf_counter()
                g(lr, conds[k])
                times[k].append(time.perf_counter() - t)
    m = {k: statistics.median(v) * 1000 / 8 for k, v in times.items()}
    print(f"x{scale}: tiny forward, batch 8, 64 px LR: with upsampler_text {m['upsampler_text']:.2f} ms/img, without {m['without']:.2f} ms/img, ratio {m['upsampler_text']/m['without']:.2f}")

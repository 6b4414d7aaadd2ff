"""ONNX Runtime (CPU provider) against PyTorch for the same model, side by side in
one process: the bundled x4 model exported with `clipsr export --onnx`, both
loaded through `clipsr_cli.load_model` and run on the same images and captions
(the pipeline's own batching), alternating, median of the rounds.

    python3 benchmarks/onnx_speed.py [--model clipsr-default-x4] [--size 64] [--images 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import clipsr_cli as clipsr


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="clipsr-default-x4")
    p.add_argument("--size", type=int, default=64, help="LR side")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        onnx_file = Path(work) / "model.onnx"
        subprocess.run([sys.executable, "-m", "clipsr_cli", "export", args.model, "--onnx", str(onnx_file)],
                       check=True, capture_output=True)
        models = {"pytorch": clipsr.load_model(args.model, device="cpu", precision="fp32"), "onnxruntime": clipsr.load_model(onnx_file)}
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
        captions = [f"a photo of thing number {i}" for i in range(args.images)]
        times = {k: [] for k in models}
        for m in models.values():  # warm-up: first calls allocate
            m.upscale(images[:2], captions[:2], batch_size=8)
        for _ in range(args.rounds):
            for name, m in models.items():
                start = time.perf_counter()
                m.upscale(images, captions, batch_size=8)
                times[name].append(time.perf_counter() - start)
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text())
    print(f"{args.model}, {args.images} images of {args.size}x{args.size} px, batch 8, {torch.get_num_threads()} "
          f"threads; CPU flags: {flags}")
    base = statistics.median(times["pytorch"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {args.images / med:.1f} img/s | {med * 1000 / args.images:.1f} ms/img | {base / med:.2f}x |")


if __name__ == "__main__":
    main()

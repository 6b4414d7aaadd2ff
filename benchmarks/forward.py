"""Forward time per image of the generator on this machine (random weights:
timing does not depend on their values), per preset, scale and batch, set up
as `clipsr upscale` runs it (channels-last, oneDNN matrix products, freed
memory kept), each configuration in its own process.

    python3 benchmarks/forward.py --presets tiny paper --scales 4 8 16
    python3 benchmarks/forward.py --presets paper --scales 4 --batches 8 --compare --bound
    python3 benchmarks/forward.py --presets paper --scales 4 --batches 8 --bf16   # a CPU with AMX

--compare also times the plain PyTorch formulation (default layout, MKL's
sgemm for linear layers, F.interpolate's bicubic, glibc's default allocator
thresholds) side by side; --compare-bicubic times ours with F.interpolate's
bicubic residual in place of the two matrix products.
--bound measures this CPU's fp32 GEMM ceiling in the same run (best of MKL
sgemm and oneDNN on 2048^3) and reports forward time / (FLOPs / ceiling).
--bf16 also times the generator with its weights cast to bf16 (as `upscale
--precision bf16` runs it on a CPU), its speed-up over fp32, and its time
against the bf16 FLOP bound (the bf16 GEMM ceiling measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def seconds_per_image(preset: str, scale: int, batch: int, mode: str, repeats: int) -> float:
    """mode: "fast" (as `clipsr upscale` runs it), "bf16" (the same with bf16
    weights, as `--precision bf16` on a CPU), "plain", or "interp-bicubic"."""
    import torch

    from clipsr_cli.model import kernels
    from clipsr_cli.model.clip import build_clip
    from clipsr_cli.model.config import load_preset
    from clipsr_cli.model.generator import Generator
    from clipsr_cli.pipeline.devices import pick_memory_format
    from clipsr_cli.pipeline.memory import keep_freed_memory

    if mode != "fast":
        kernels.BICUBIC_MATRIX_MAX_SIDE = 0  # F.interpolate's bicubic
    if mode == "plain":
        kernels._onednn_dense = lambda x: False
        layout = torch.contiguous_format
    else:
        keep_freed_memory()
        layout = pick_memory_format(torch.device("cpu"))
    cfg = load_preset(preset)
    gen = Generator(cfg, build_clip(cfg), scale).eval().to(memory_format=layout)
    if mode == "bf16":
        gen = gen.to(torch.bfloat16)  # as Upscaler casts it: once, not per call
    lr_size = cfg.generator.hr_crop // scale
    lr = torch.rand(batch, 3, lr_size, lr_size).contiguous(memory_format=layout)
    with torch.inference_mode():
        cond = gen.encode_text(["a small bird with a red head"] * batch)
        gen(lr, cond)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            gen(lr, cond)
            best = min(best, time.perf_counter() - t)
    return best / batch


def gemm_ceiling(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> dict[str, float]:
    """Best GFLOP/s of an n^3 product (fp32, or bf16) through torch.mm (MKL for
    fp32) and through oneDNN."""
    import torch
    import torch.nn.functional as F
    from kernels import best_ms  # benchmarks/kernels.py, beside this script

    from clipsr_cli.model.kernels import dense
    from clipsr_cli.pipeline.memory import keep_freed_memory

    keep_freed_memory()
    a, b = torch.randn(n, n).to(getattr(torch, dtype)), torch.randn(n, n).to(getattr(torch, dtype))
    products = {"mkl": lambda: torch.mm(a, b), "onednn": lambda: dense(a, b, None),
                "mkl_linear": lambda: F.linear(a, b)}
    return {name: 2 * n**3 / best_ms(fn, repeats) / 1e6 for name, fn in products.items()}


def child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--scales", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="also time the plain PyTorch formulation")
    ap.add_argument("--compare-bicubic", action="store_true", help="also time ours with F.interpolate's bicubic")
    ap.add_argument("--bound", action="store_true", help="measure the GEMM ceiling; report time / FLOP bound")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 weights; speed-up and bf16 FLOP bound")
    ap.add_argument("--one", nargs=4, metavar=("PRESET", "SCALE", "BATCH", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--ceiling", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        preset, scale, batch, mode = args.one
        print(json.dumps({"s": seconds_per_image(preset, int(scale), int(batch), mode, args.repeats)}))
        return
    if args.ceiling:
        print(json.dumps(gemm_ceiling(dtype=args.ceiling)))
        return

    import torch

    from clipsr_cli.model.config import load_preset
    from clipsr_cli.model.info import describe

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
    ceiling = None
    if args.bound:
        g = child("--ceiling", "float32")
        ceiling = max(g.values())
        print(f"GEMM ceiling (2048^3, best of 5): MKL mm {g['mkl']:.0f}, MKL linear {g['mkl_linear']:.0f}, "
              f"oneDNN {g['onednn']:.0f} GFLOP/s -> {ceiling:.0f}")
    head = "| preset | scale | LR -> SR | batch | ms / image |"
    rule = "|---|---|---|---|---|"
    if args.compare:
        head, rule = head + " plain PyTorch | speed-up |", rule + "---|---|"
    if args.compare_bicubic:
        head, rule = head + " F.interpolate's bicubic | speed-up |", rule + "---|---|"
    if args.bound:
        head, rule = head + " GFLOP / image | FLOP bound | time / bound |", rule + "---|---|---|"
    if args.bf16:
        bf16_ceiling = max(child("--ceiling", "bfloat16").values())
        print(f"bf16 GEMM ceiling (2048^3, best of 5): {bf16_ceiling:.0f} GFLOP/s")
        head, rule = head + " bf16 ms / image | fp32 / bf16 | bf16 time / bf16 bound |", rule + "---|---|---|"
    print(head + "\n" + rule)
    for name in args.presets:
        cfg = load_preset(name)
        flops = {r.scale: r.image_gflops for r in describe(cfg, tuple(args.scales))} if args.bound or args.bf16 else {}
        for scale in args.scales:
            lr_size = cfg.generator.hr_crop // scale
            for batch in args.batches:
                ms = 1000 * child("--one", name, str(scale), str(batch), "fast", "--repeats", str(args.repeats))["s"]
                row = f"| {name} | x{scale} | {lr_size} -> {lr_size * scale} | {batch} | {ms:.1f} |"
                for wanted, mode in ((args.compare, "plain"), (args.compare_bicubic, "interp-bicubic")):
                    if wanted:
                        other = 1000 * child("--one", name, str(scale), str(batch), mode,
                                             "--repeats", str(args.repeats))["s"]
                        row += f" {other:.1f} | {other / ms:.2f}x |"
                if args.bound:
                    bound = 1000 * flops[scale] / ceiling
                    row += f" {flops[scale]:.2f} | {bound:.1f} ms | {ms / bound:.2f}x |"
                if args.bf16:
                    half = 1000 * child("--one", name, str(scale), str(batch), "bf16", "--repeats", str(args.repeats))["s"]
                    row += f" {half:.1f} | {ms / half:.2f}x | {half / (1000 * flops[scale] / bf16_ceiling):.2f}x |"
                print(row, flush=True)


if __name__ == "__main__":
    main()

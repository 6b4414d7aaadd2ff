"""Peak memory of the paper preset's forward pass against the authors' generator.

Each side in its own process, alternating, fp32, 2 threads, a batch of 64x64
LR images at x4 (256x256 out), random weights (memory does not depend on their
values): clipsr as `upscale` runs it (`Upscaler.upscale_batch`: channels-last,
freed memory kept for the next batch), the authors' `NetG` as their test script
runs it (`torch.no_grad`, its CLIP text encoder beside it).  Peak = the
process's maximum resident set (ru_maxrss) after three forward passes.

    python3 benchmarks/memory_vs_reference.py --reference PATH/TO/CLIP-SR

PATH/TO/CLIP-SR is a checkout of github.com/Bingwen-Hu/CLIP-SR (its Code/ and
the CLIP/ package it bundles); their code is imported from there, never copied.
Without --reference only clipsr's side is measured.  `--lanes 2`: clipsr as
`clipsr upscale` runs on 2 cores, two batches in flight (one thread each).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import types


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ours(batch: int, lr_side: int, lanes: int) -> dict:
    from clipsr_cli.pipeline.memory import keep_freed_memory

    keep_freed_memory()  # as the CLI does before anything else
    import torch

    from clipsr_cli.model.clip import build_clip
    from clipsr_cli.model.config import load_preset
    from clipsr_cli.model.generator import Generator
    from clipsr_cli.pipeline.lanes import Lanes
    from clipsr_cli.pipeline.upscaler import Upscaler

    cfg = load_preset("paper")
    upscaler = Upscaler(Generator(cfg, build_clip(cfg), 4), torch.device("cpu"), tile=0)
    built = peak_gib()
    lrs = [torch.rand(3, lr_side, lr_side) for _ in range(batch)]
    caption = "a small bird with a red head and white wings"
    # `clipsr upscale` on this CPU: one batch in each of 2 lanes at once, 1 thread each
    run = Lanes(lanes, max(1, torch.get_num_threads() // lanes))
    for _ in range(3 * lanes):
        run.submit(lambda: upscaler.upscale_batch(lrs, [caption] * batch), lambda result, error: None)
    run.close()
    return {"built": built, "peak": peak_gib()}


def reference(root: str, batch: int, lr_side: int) -> dict:
    import torch

    sys.path.insert(0, f"{root}/Code")
    # their lib/utils.py imports easydict, yaml, ...; the network needs only this from it
    utils = types.ModuleType("lib.utils")
    utils.dummy_context_mgr = contextlib.nullcontext
    sys.modules["lib"] = types.ModuleType("lib")
    sys.modules["lib"].utils = utils
    sys.modules["lib.utils"] = utils
    spec = importlib.util.spec_from_file_location("authors_clip_model", f"{root}/CLIP/clip/model.py")
    clip_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_model)
    from models.net import CLIP_TXT_ENCODER, NetG

    # ViT-B/32, as their configs load it (clip.load builds this architecture)
    clip = clip_model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).float().eval()
    text = CLIP_TXT_ENCODER(clip).eval()
    net = NetG(64, 512, 512, 256, 3, False, clip).eval()  # nf, z_dim, cond_dim, imsize, ch_size (cfg/*.yml)
    built = peak_gib()
    lr = torch.rand(batch, 3, lr_side, lr_side)
    tokens = torch.randint(1, 49000, (batch, 77))
    with torch.no_grad():
        for _ in range(3):
            sentence, _ = text(tokens)
            net(lr, sentence, eval=True)
    return {"built": built, "peak": peak_gib()}


def child(args: argparse.Namespace, side: str) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--batch", str(args.batch), "--lr", str(args.lr),
           "--threads", str(args.threads), "--lanes", str(args.lanes)] + (["--reference", args.reference] if args.reference else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{side} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", help="a checkout of github.com/Bingwen-Hu/CLIP-SR")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=int, default=64, help="LR side in pixels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lanes", type=int, default=1, help="clipsr's batches in flight at once (upscale on 2 cores: 2)")
    p.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        result = ours(args.batch, args.lr, args.lanes) if args.child == "ours" else reference(args.reference, args.batch, args.lr)
        print(json.dumps(result))
        return
    sides = ["ours"] + (["reference"] if args.reference else [])
    rows: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(args.rounds):
        for side in sides:
            rows[side].append(child(args, side))
    print(f"paper x4, batch {args.batch}, {args.lr}x{args.lr} LR, fp32, {args.threads} threads; "
          f"{args.lanes} lane(s); peak RSS in GiB, {args.rounds} rounds alternating")
    print("| generator | after building | peak, each round | median |")
    print("|---|---|---|---|")
    for side in sides:
        peaks = [r["peak"] for r in rows[side]]
        print(f"| {'clipsr paper preset' if side == 'ours' else 'authors (NetG + CLIP text encoder)'} "
              f"| {statistics.median(r['built'] for r in rows[side]):.2f} "
              f"| {' / '.join(f'{x:.2f}' for x in peaks)} | **{statistics.median(peaks):.2f}** |")


if __name__ == "__main__":
    main()

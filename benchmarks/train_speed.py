"""Training throughput (samples/s) and peak memory of one full training step.

Each configuration runs in its own process (so peak RSS is its own): synthetic
batches at the paper's crop (256 px HR), the full loss (D step with MA-GP, G
step with L1 + VGG-19 perceptual + adversarial + CLIP cosine, EMA).  Offline,
CLIP and VGG-19 are randomly initialised: the arithmetic is the same as with
the real weights.

    python3 benchmarks/train_speed.py            # tiny and paper, x4 and x8
    python3 benchmarks/train_speed.py --one tiny 4 16 3
    python3 benchmarks/train_speed.py --precisions fp32 bf16 --loss l1-vgg   # side by side (an AMX CPU)

--precisions runs each configuration once per precision, alternating, and
gives bf16's samples/s over fp32's; --loss l1-vgg leaves the discriminator out
(L1 + VGG-19 perceptual only).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [("tiny", 4, 16, 5), ("tiny", 8, 16, 5), ("paper", 4, 4, 2), ("paper", 8, 4, 2)]


def offline_preset(name: str, folder: Path) -> str:
    """The preset with random CLIP weights (no manifest file needed)."""
    from clipsr_cli.plugins.registry import lookup

    src = Path(lookup("preset", name).factory)
    text = src.read_text().replace('weights = "clip-vit-b-32-openai"', 'weights = ""')
    if 'config = "' in text:  # keep a custom tower JSON reachable from the copy
        text = text.replace('config = "', f'config = "{src.parent}/')
    dst = folder / f"{name}-random-clip.toml"
    dst.write_text(text)
    return str(dst)


def one(preset: str, scale: int, batch: int, steps: int, precision: str = "fp32", adversarial: bool = True) -> dict:
    import torch

    from clipsr_cli.train.config import TrainConfig
    from clipsr_cli.train.distributed import Dist
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.losses import PerceptualLoss, vgg19_features
    from clipsr_cli.train.trainer import Trainer

    class RandomVGGTrainer(Trainer):
        def _perceptual(self):
            return PerceptualLoss(vgg19_features(), self.cfg.perceptual_layers).to(self.device)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(preset=offline_preset(preset, Path(tmp)), scale=scale, batch_size=batch,
                          exp_dir=tmp, data_root=tmp, precision=precision,
                          **({} if adversarial else {"adversarial_weight": 0.0})).validate()
        trainer = RandomVGGTrainer(cfg, torch.device("cpu"), Dist(), Experiment(Path(tmp)))
        crop = trainer.model_cfg.generator.hr_crop
        batch_data = {"hr": torch.rand(batch, 3, crop, crop), "lr": torch.rand(batch, 3, crop // scale, crop // scale),
                      "captions": [f"a photo of a small bird number {i}" for i in range(batch)]}
        trainer.train_step(batch_data)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch_data)
        seconds = (time.perf_counter() - start) / steps
    return {"preset": preset, "scale": scale, "batch": batch, "s_per_step": seconds,
            "samples_per_s": batch / seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=4, metavar=("PRESET", "SCALE", "BATCH", "STEPS"))
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16"))
    p.add_argument("--loss", choices=("full", "l1-vgg"), default="full")
    args = p.parse_args()
    adversarial = args.loss == "full"
    if args.one:
        preset, scale, batch, steps = args.one
        print(json.dumps(one(preset, int(scale), int(batch), int(steps), args.precisions[0], adversarial)))
        return
    import torch

    loss = "full loss" if adversarial else "L1 + VGG-19 perceptual"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {loss}, 256 px HR crops")
    print("| preset | scale | batch | precision | s / step | samples / s | against fp32 | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, scale, batch, steps in CONFIGS:
        fp32 = None
        for precision in args.precisions:
            done = subprocess.run([sys.executable, __file__, "--one", preset, str(scale), str(batch), str(steps),
                                   "--precisions", precision, "--loss", args.loss],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            fp32 = r["samples_per_s"] if precision == "fp32" else fp32
            ratio = f"{r['samples_per_s'] / fp32:.2f}x" if fp32 else "—"
            print(f"| {preset} | x{scale} | {batch} | {precision} | {r['s_per_step']:.2f} | {r['samples_per_s']:.2f} "
                  f"| {ratio} | {r['peak_rss_gib']:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()

"""CPU time of one step of the text-guidance recipe (tiny preset, x8, 64 px
crops, batch 16, L1 only, one thread), with the step's own speed-ups switched
off and on in one process, alternating: the per-caption text-feature cache
and the fused Adam kernel.  Captions from benchmarks/text_guidance.py's data
(made if missing); the images are random (the cost does not depend on them).

    python3 benchmarks/train_step_time.py [--rounds 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import text_guidance  # noqa: E402  (the benchmark's data, beside this script)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-text-guidance"))
    args = p.parse_args()

    from clipsr_cli.pipeline.memory import keep_freed_memory
    from clipsr_cli.train.config import with_preset_defaults
    from clipsr_cli.train.distributed import Dist
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.trainer import Trainer

    keep_freed_memory()  # as the CLI does
    torch.set_num_threads(1)
    data = args.work / "data-v2-0-2000" / "train"
    if not (data / "captions.json").is_file():
        text_guidance.make_dataset(data, 2000, 0)
    captions = list(json.loads((data / "captions.json").read_text()).values())
    exp = Path(tempfile.mkdtemp())
    cfg = dataclasses.replace(with_preset_defaults("tiny"), preset="tiny", data_root=str(data), scale=8, hr_crop=64,
                              batch_size=16,
                              perceptual_weight=0.0, adversarial_weight=0.0, exp_dir=str(exp),
                              tensorboard=False).validate()
    trainer = Trainer(cfg, torch.device("cpu"), Dist(), Experiment(exp))
    rng = random.Random(0)
    hr = torch.rand(16, 3, 64, 64)
    lr = torch.nn.functional.interpolate(hr, scale_factor=1 / 8, mode="bicubic", antialias=True)
    batches = [{"hr": hr, "lr": lr, "captions": rng.sample(captions, 16)} for _ in range(args.steps)]
    cached, fused = trainer.text_features, trainer.opt_g
    plain = torch.optim.Adam(trainer.g_params, lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), foreach=False)
    variants = {"before (encode every step, per-tensor Adam)": (trainer.gen.text.encode, plain),
                "after (cached text features, fused Adam)": (cached, fused)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (features, opt) in variants.items():
            trainer.text_features, trainer.opt_g = features, opt
            for b in batches[:3]:  # warm-up (and the cache filled, as after the first epoch)
                trainer.train_step(b)
            for b in batches:
                features(b["captions"])
            start = time.process_time()
            for b in batches:
                trainer.train_step(b)
            times[name].append((time.process_time() - start) / len(batches) * 1000)
    for name, ms in times.items():
        print(f"{name}: {min(ms):.1f} ms CPU per step (best of {args.rounds}; all: "
              f"{', '.join(f'{m:.1f}' for m in ms)})")


if __name__ == "__main__":
    main()

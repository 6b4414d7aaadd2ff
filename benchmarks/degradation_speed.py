"""Does the data loader keep up with training under `--degradation realistic`?
Samples per second of SRDataset (crop, caption, degradation) in one process,
bicubic against realistic, beside the training step's samples per second for
the bundled x4 model's recipe (small preset, x4, 128 px crops, batch 16, L1),
all in one process on one thread, as that recipe trains.

    OMP_NUM_THREADS=1 python3 benchmarks/degradation_speed.py [--data ../shared/data/train-mini]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from clipsr_cli.plugins.registry import lookup
from clipsr_cli.train.config import TrainConfig
from clipsr_cli.train.data import SRDataset
from clipsr_cli.train.distributed import Dist
from clipsr_cli.train.experiment import Experiment
from clipsr_cli.train.run import load_records
from clipsr_cli.train.trainer import Trainer


def samples_per_s(dataset: SRDataset, n: int) -> float:
    start = time.process_time()
    for i in range(n):
        dataset[(0, i % len(dataset))]
    return n / (time.process_time() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/train-mini")
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    records = load_records("folder", args.data, "train", str(Path(args.data) / "captions.json"))
    for name in ("bicubic", "realistic"):
        degradation = None if name == "bicubic" else lookup("degradation", name).factory(None)
        dataset = SRDataset(records, 128, 4, cache=True, degradation=degradation)
        samples_per_s(dataset, len(records))  # decode and cache every image first
        print(f"| data, {name} | {samples_per_s(dataset, args.samples):.1f} samples/s per process |")
    with tempfile.TemporaryDirectory() as work:
        cfg = dataclasses.replace(TrainConfig(), preset="small", scale=4, hr_crop=128, batch_size=16, lr_g=5e-4,
                                  beta1=0.9, perceptual_weight=0.0, adversarial_weight=0.0, exp_dir=work)
        trainer = Trainer(cfg, torch.device("cpu"), Dist(), Experiment(Path(work)))
        batch = {"hr": torch.rand(16, 3, 128, 128), "lr": torch.rand(16, 3, 32, 32), "captions": ["a bird"] * 16}
        for _ in range(3):
            trainer.train_step(batch)
        start, steps = time.process_time(), 10
        for _ in range(steps):
            trainer.train_step(batch)
        print(f"| training step, small x4, batch 16 | {16 * steps / (time.process_time() - start):.1f} samples/s |")


if __name__ == "__main__":
    main()

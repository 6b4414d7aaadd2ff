"""One `clipsr train` invocation: data and validation set, the trainer, the
experiment folder, and the periodic work (log, samples, validation,
checkpoints) around each step; `fit` runs it, `export_generator` turns a
checkpoint into the file `upscale --weights` loads."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from clipsr_cli.errors import UserError
from clipsr_cli.model.checkpoint import save_generator
from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.config import ConfigError, ModelConfig
from clipsr_cli.model.generator import Generator
from clipsr_cli.plugins.protocols import Record
from clipsr_cli.plugins.registry import lookup
from clipsr_cli.train import distributed
from clipsr_cli.train.config import TrainConfig
from clipsr_cli.train.data import (
    ResumableSampler,
    SRDataset,
    ValImage,
    check_readable,
    collate,
    load_validation,
)
from clipsr_cli.train.experiment import Experiment
from clipsr_cli.train.trainer import Trainer


class TrainingDiverged(UserError, RuntimeError):
    pass


def load_records(name: str, root: str, split: str, captions: str = "") -> list[Record]:
    return lookup("dataset", name).factory(Path(root), split, captions)


def make_degradation(cfg: TrainConfig):
    """The registered degradation the config names; None for `bicubic` without
    parameters, the paper's PIL path, kept as it was (bit for bit)."""
    if cfg.degradation == "bicubic" and not cfg.degradation_params:
        return None
    return lookup("degradation", cfg.degradation).factory(Path(cfg.degradation_params) if cfg.degradation_params
                                                          else None)


def bicubic_baseline(images: list[ValImage], scale: int) -> dict[str, float]:
    """PSNR / SSIM of PIL (MATLAB-like) bicubic on the validation set."""
    metrics = [lookup("metric", name).factory for name in ("psnr", "ssim")]
    return {m.name: sum(float(m(v.bicubic[None], v.hr[None], scale)[0]) for v in images) / len(images)
            for m in metrics}


# --- the run --------------------------------------------------------------------------
class Run:
    """One `clipsr train` invocation: data, trainer and experiment wired together,
    with the periodic work (log, samples, validation, checkpoints) around each step."""

    def __init__(self, cfg: TrainConfig, device: torch.device, dist: distributed.Dist, exp: Experiment):
        self.cfg, self.dist, self.exp = cfg, dist, exp
        self.records = load_records(cfg.dataset, cfg.data_root, "train", cfg.captions)
        if cfg.val_root:
            val = load_records("folder", cfg.val_root, "train", cfg.val_captions)
        else:
            val = load_records(cfg.dataset, cfg.data_root, "test", cfg.captions) if cfg.dataset != "folder" else []
        if dist.main:
            check_readable(self.records)
            check_readable(val[: cfg.val_images], "validation")
        degradation = make_degradation(cfg)
        # decoded (and degraded) once, on the process that validates
        self.val_images = load_validation(val[: cfg.val_images], cfg.scale, degradation, cfg.seed) if dist.main else []
        self.trainer = Trainer(cfg, device, dist, exp)
        if cfg.init_weights and not cfg.resume:  # before the experiment is written: a mismatch leaves nothing
            self.trainer.init_from(cfg.init_weights)
        dataset = SRDataset(self.records, self.trainer.model_cfg.generator.hr_crop, cfg.scale, cfg.seed,
                            cfg.hflip, cfg.cache_images, cfg.caption_dropout, degradation, cfg.gt_usm,
                            cfg.hr_rescale)
        self.trainer.text_features.fill(dataset.possible_captions())
        self.sampler = ResumableSampler(len(dataset), cfg.batch_size, cfg.seed, dist.rank, dist.world)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(dataset)} training images cannot fill one batch of {cfg.batch_size} "
                              f"x {dist.world} process(es); lower --batch-size")
        self.loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                                 pin_memory=device.type == "cuda",
                                 # its own generator: a new epoch iterator must not draw from the global
                                 # RNG, or a resumed run's RNG would drift from an uninterrupted one
                                 generator=torch.Generator().manual_seed(cfg.seed))
        self.total = cfg.max_steps or cfg.epochs * self.steps_per_epoch

    def start(self) -> None:
        t, log = self.trainer, self.exp.log
        self.exp.open(self.cfg)  # only now, so that a run refused at set-up leaves no experiment behind
        if self.cfg.resume and (found := self.exp.latest_state()) is not None:
            t.load(found[0], self.steps_per_epoch)
            log.info("resumed from %s at step %d", found[1], t.step)
        elif self.cfg.init_weights:
            log.info("generator initialised from %s", self.cfg.init_weights)
        log.info("training %s x%d on %d images (%d steps/epoch), %d steps, device %s, %d process(es)",
                 t.model_cfg.name, self.cfg.scale, len(self.records), self.steps_per_epoch, self.total,
                 t.device, self.dist.world)
        if self.val_images and t.step == 0:
            baseline = bicubic_baseline(self.val_images, self.cfg.scale)
            self.exp.record(0, {f"bicubic_{k}": v for k, v in baseline.items()}, kind="val")
            log.info("validation on %d images; bicubic: %s", len(self.val_images),
                     ", ".join(f"{k} {v:.4f}" for k, v in baseline.items()))

    def export(self, name: str) -> None:
        t = self.trainer
        save_generator(self.exp.root / name, t.averaged_generator(),
                       {"weights": "ema" if t.ema else "raw", "step": str(t.step)})

    def checkpoint(self) -> None:
        self.exp.save_checkpoint(self.trainer.step, self.trainer.state(self.steps_per_epoch),
                                 self.cfg.keep_checkpoints)
        if self.dist.main:
            self.export("model.safetensors")

    def validation(self) -> None:
        if not self.val_images:
            return
        t = self.trainer
        values = t.validate(self.val_images)
        is_best = values.get("psnr", -math.inf) > t.best.get("psnr", -math.inf)
        if is_best:
            t.best["psnr"] = values["psnr"]
            self.export("best.safetensors")
        self.exp.record(t.step, values | {"best_psnr": t.best.get("psnr")}, kind="val")
        self.exp.log.info("step %d validation %s%s", t.step,
                          ", ".join(f"{k} {v:.4f}" for k, v in values.items()), " (best)" if is_best else "")

    def check_bad_steps(self) -> None:
        t = self.trainer
        self.exp.log.warning("step %d: non-finite loss, step skipped (%d in a row)", t.step, t.bad_steps)
        if t.bad_steps >= self.cfg.max_bad_steps:
            last = sorted(self.exp.checkpoints.glob("step_*.safetensors"))
            raise TrainingDiverged(
                f"{t.bad_steps} non-finite steps in a row at step {t.step}: training stopped. "
                f"Last good checkpoint: {last[-1] if last else 'none'}; lower the learning rates "
                f"or use --precision fp32, then --resume")

    def after_step(self, logs: dict, rate: float) -> None:
        cfg, step = self.cfg, self.trainer.step
        if logs["skipped"]:
            self.check_bad_steps()
        if step % cfg.log_every == 0 or step == self.total:
            self.exp.record(step, {k: v for k, v in logs.items() if k != "skipped"}
                            | {"epoch": (step - 1) // self.steps_per_epoch, "it_per_s": rate,
                               "samples_per_s": rate * cfg.batch_size * self.dist.world})
        if cfg.sample_every and step % cfg.sample_every == 0:
            lr, sr, hr, captions = self.trainer.last_batch
            self.exp.save_samples(step, lr[:4], sr[:4], hr[:4], captions[:4])
        if cfg.val_every and step % cfg.val_every == 0:
            self.validation()
        if step % cfg.checkpoint_every == 0 and step < self.total and not self.trainer.bad_steps:
            self.checkpoint()

    def loop(self, on_step: Callable[[int, int, dict], None] | None = None) -> None:
        try:
            self._steps(on_step)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # more Ctrl-Cs: still the one message
            last = sorted(self.exp.checkpoints.glob("step_*.safetensors"))
            where = (f"the last checkpoint is {last[-1]} (step {int(last[-1].stem[5:])}): run the same command "
                     "with --resume to go on from it" if last else "no checkpoint was written yet: run the "
                     "same command (without --resume, in a new --exp-dir or after removing this one) to start again")
            message = f"interrupted at step {self.trainer.step}; {where}"
            self.exp.log.warning(message)
            raise TrainingInterrupted(message) from None

    def _steps(self, on_step: Callable[[int, int, dict], None] | None) -> None:
        t = self.trainer
        started, start_step = time.perf_counter(), t.step
        while t.step < self.total:
            self.sampler.set_position(*divmod(t.step, self.steps_per_epoch))
            for batch in self.loader:
                t.set_learning_rates(self.total)
                logs = t.train_step(batch)
                t.step += 1
                rate = (t.step - start_step) / max(time.perf_counter() - started, 1e-9)
                self.after_step(logs, rate)
                if on_step is not None:
                    on_step(t.step, self.total, logs | {"it_per_s": rate})
                if t.step >= self.total:
                    break
        self.checkpoint()
        if not self.cfg.val_every or self.total % self.cfg.val_every:
            self.validation()
        distributed.barrier(self.dist)
        self.exp.log.info("finished at step %d; generator: %s", t.step, self.exp.root / "model.safetensors")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; its message says where it stopped and how to go on."""


def fit(cfg: TrainConfig, device: torch.device, dist: distributed.Dist, exp: Experiment,
        on_step: Callable[[int, int, dict], None] | None = None) -> Trainer:
    """Train until max_steps / epochs; checkpoints, samples, validation and the
    exported generator land in the experiment folder."""
    run = Run(cfg, device, dist, exp)
    run.start()
    run.loop(on_step)
    return run.trainer


def export_generator(checkpoint: Path, output: Path, ema: bool = True, weights_dir=None, half: bool = False,
                     with_clip: bool = True) -> Path:
    """The generator file `upscale --weights` loads, from a full training state."""
    import json

    from clipsr_cli.train.state import load_state

    state, _ = load_state(Path(checkpoint))
    model = ModelConfig.from_dict(json.loads(state["model_config"]), origin=f"{checkpoint} model_config")
    gen = Generator(model, load_clip(model, weights_dir=weights_dir), state["scale"])
    weights = state["ema"] if ema and state["ema"] else state["gen"]
    gen.load_state_dict(weights, strict=False)
    save_generator(output, gen, {"weights": "ema" if weights is state["ema"] else "raw", "step": str(state["step"])},
                   half=half, with_clip=with_clip)
    return Path(output)

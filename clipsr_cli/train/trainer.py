"""The adversarial training loop of CLIP-SR (DESIGN.md §1), from the same stages
`upscale` runs.

Per step: D first (hinge on real / fake / mismatched-caption pairs + MA-GP),
then G (L1 + VGG-19 perceptual + lambda_adv * (-D(C(SR), T) - alpha * cos)),
then the EMA.  The paper's ablations are configuration: `--adversarial-weight
0` builds no discriminator; the presets' `stages.text_encoder = "none"` and
`stages.clip_vit = false` remove text and the CLIP-ViT.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from clipsr_cli.errors import UserError
from clipsr_cli.model.checkpoint import save_generator
from clipsr_cli.model.clip import TextTower, load_clip
from clipsr_cli.model.config import ConfigError, ModelConfig, load_preset
from clipsr_cli.model.discriminator import Discriminator
from clipsr_cli.model.generator import Generator, state_without
from clipsr_cli.model.weights import WeightsError
from clipsr_cli.pipeline.devices import pick_precision
from clipsr_cli.plugins.protocols import Record
from clipsr_cli.plugins.registry import lookup, registry
from clipsr_cli.train import distributed
from clipsr_cli.train.config import TrainConfig
from clipsr_cli.train.data import ResumableSampler, SRDataset, check_readable, collate, downsample, open_rgb, to_tensor
from clipsr_cli.train.experiment import Experiment
from clipsr_cli.train.losses import PerceptualLoss, d_hinge_loss, g_adversarial, load_vgg19_features, ma_gp


class TrainingDiverged(UserError, RuntimeError):
    pass


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The preset, with the training crop of this run (it sets the encoder depth)."""
    model = load_preset(cfg.preset)
    if cfg.hr_crop:
        model = dataclasses.replace(model, generator=dataclasses.replace(model.generator, hr_crop=cfg.hr_crop))
        model.validate(f"--hr-crop {cfg.hr_crop}")
    return model


def load_records(name: str, root: str, split: str, captions: str = "") -> list[Record]:
    return lookup("dataset", name).factory(Path(root), split, captions)


class EMA:
    """Exponential moving average of the generator's own (non-CLIP) tensors."""

    def __init__(self, gen: Generator, decay: float):
        self.decay = decay
        live = gen.own_state_dict()
        self.shadow = {k: v.clone() for k, v in live.items()}
        self._live = live  # the same tensor objects the optimiser updates in place

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimiser step `step` (1-based).  The decay warms up as
        (1 + t) / (10 + t): an average over the first t steps' weights with a
        window growing with t, instead of one still weighted by the random
        initialisation after 1 / (1 - decay) steps."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in self.shadow.items():
            if v.is_floating_point():
                v.lerp_(self._live[k], 1.0 - decay)
            else:
                v.copy_(self._live[k])


class Trainer:
    def __init__(self, cfg: TrainConfig, device: torch.device, dist: distributed.Dist, exp: Experiment):
        self.cfg, self.device, self.dist, self.exp = cfg, device, dist, exp
        self.model_cfg = model_config(cfg)
        torch.manual_seed(cfg.seed)
        clip = load_clip(self.model_cfg, weights_dir=cfg.weights_dir or None).to(device)
        self.clip = clip
        self.gen = Generator(self.model_cfg, clip, cfg.scale).to(device)
        self.eval_gen = Generator(self.model_cfg, clip, cfg.scale).to(device).eval()  # EMA / validation copy
        self.tower = TextTower(clip)
        self.disc = Discriminator(self.model_cfg, clip).to(device) if cfg.adversarial_weight > 0 else None
        self.perceptual = self._perceptual() if cfg.perceptual_weight > 0 else None
        self.ema = EMA(self.gen, cfg.ema_decay) if cfg.ema_decay > 0 else None
        betas = (cfg.beta1, cfg.beta2)
        self.g_params = self.gen.trainable_parameters()
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.lr_g, betas=betas)
        self.d_params = [p for p in self.disc.parameters() if p.requires_grad] if self.disc else []
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.lr_d, betas=betas) if self.disc else None
        try:
            self.dtype = pick_precision(cfg.precision, device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.bad_steps = 0
        self.previous_sentence: torch.Tensor | None = None  # the mismatched caption at batch size 1
        self.best: dict[str, float] = {}

    def _perceptual(self) -> PerceptualLoss:
        from clipsr_cli.model.weights import resolve

        try:
            path = resolve("vgg19-imagenet", weights_dir=self.cfg.weights_dir or None)
        except WeightsError as e:
            raise WeightsError(f"{e}. To train without the perceptual loss, pass --perceptual-weight 0") from None
        return PerceptualLoss(load_vgg19_features(path), self.cfg.perceptual_layers).to(self.device)

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # --- one step --------------------------------------------------------------
    def sentence(self, captions: list[str], feats) -> torch.Tensor:
        """CLIP_text(T) for D and the cosine term, whatever the generator's text stage."""
        if self.gen.text.clip_sentence:
            return feats.sentence
        return self.tower(self.tower.tokenize(captions).to(self.device))[0]

    def d_losses(self, hr, sr, sentence) -> dict[str, torch.Tensor]:
        c = self.cfg
        with torch.no_grad(), self.autocast():
            real_maps, _ = self.disc.features(hr)
            fake_maps, _ = self.disc.features(sr.detach())
        real_maps = real_maps.float().requires_grad_()
        s = sentence.detach().float().requires_grad_()
        with self.autocast():
            d_real = self.disc.logit(real_maps, s)
            d_fake = self.disc.logit(fake_maps.float(), s.detach())
            mismatched = self.mismatched(s.detach())
            d_mis = None if mismatched is None else self.disc.logit(real_maps, mismatched).float()
        hinge = d_hinge_loss(d_real.float(), d_fake.float(), d_mis)
        gp = ma_gp(d_real.float(), (real_maps, s), c.magp_weight, c.magp_power)
        return {"loss_d": hinge + gp, "hinge": hinge.detach(), "magp": gp.detach(),
                "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}

    def mismatched(self, sentence: torch.Tensor) -> torch.Tensor | None:
        """Captions that do not describe the real images (GALIP's mismatched pairs):
        the batch's own shifted by one.  At batch size 1 that shift is the matching
        caption itself, so the previous batch's caption stands in (none on the first
        step: the term is left out)."""
        if sentence.shape[0] > 1:
            return sentence.roll(1, dims=0)
        return self.previous_sentence

    def g_losses(self, hr, sr, sentence) -> dict[str, torch.Tensor]:
        c = self.cfg
        out = {"l1": F.l1_loss(sr.float(), hr)}
        total = c.l1_weight * out["l1"]
        if self.perceptual is not None:
            with self.autocast():
                out["perceptual"] = self.perceptual(sr, hr).float()
            total = total + c.perceptual_weight * out["perceptual"]
        if self.disc is not None:
            with self.autocast():
                maps, embedding = self.disc.features(sr)
                logits = self.disc.logit(maps, sentence)
            out["adv"] = g_adversarial(logits.float(), embedding.float(), sentence.float(), c.clip_alpha)
            total = total + c.adversarial_weight * out["adv"]
        out["loss_g"] = total
        return out

    def _apply(self, loss, params, opt) -> bool:
        """Backward, average over processes, step.  False (nothing stepped) when
        the loss is not finite on any process."""
        if distributed.any_rank(not torch.isfinite(loss).item(), self.dist, self.device):
            opt.zero_grad(set_to_none=True)
            return False
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(params, self.dist)
        self.scaler.step(opt)
        return True

    def set_learning_rates(self, total: int) -> None:
        """The rates of step `self.step` of `total`: a function of the step
        alone, so a resumed run follows the same schedule."""
        factor = 1.0
        if self.cfg.lr_schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * min(self.step / max(total, 1), 1.0)))
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr * factor

    def train_step(self, batch: dict) -> dict[str, float]:
        hr = batch["hr"].to(self.device, non_blocking=True)
        lr = batch["lr"].to(self.device, non_blocking=True)
        captions = batch["captions"]
        feats = self.gen.text.encode(captions)
        sentence = self.sentence(captions, feats) if self.disc is not None else None
        with self.autocast():
            sr = self.gen(lr, self.gen.text(feats))
        logs: dict[str, torch.Tensor] = {}
        ok = True
        if self.disc is not None:
            d = self.d_losses(hr, sr, sentence)
            self.previous_sentence = sentence.detach()[-1:].float()
            ok = self._apply(d["loss_d"], self.d_params, self.opt_d)
            logs.update(d)
            self.disc.requires_grad_(False)  # D is only a critic in G's step
        if ok:
            g = self.g_losses(hr, sr, sentence)
            ok = self._apply(g["loss_g"], self.g_params, self.opt_g)
            logs.update(g)
        if self.disc is not None:
            for p in self.d_params:
                p.requires_grad_(True)
        self.scaler.update()
        if ok:
            self.bad_steps = 0
            if self.ema is not None:
                self.ema.update(self.step + 1)
        else:
            self.bad_steps += 1
        self.last_batch = (lr.detach(), sr.detach(), hr, captions)
        return {k: float(v.detach()) for k, v in logs.items()} | {"skipped": not ok}

    # --- evaluation --------------------------------------------------------------
    def averaged_generator(self) -> Generator:
        """The EMA weights (or the live ones) in the evaluation copy."""
        state = self.ema.shadow if self.ema is not None else self.gen.own_state_dict()
        self.eval_gen.load_state_dict(state, strict=False)
        return self.eval_gen

    @torch.no_grad()
    def validate(self, images: list[ValImage]) -> dict[str, float]:
        gen = self.averaged_generator()
        metrics = [m for m in (e.factory for e in registry("metric").values())
                   if m.needs_reference and not m.needs_captions and not m.set_level]
        totals: dict[str, float] = {}
        for v in images:
            cond = gen.text(gen.text.encode([v.caption]))
            with self.autocast():
                sr = gen(v.lr[None].to(self.device), cond).float().clamp(0, 1)
            for m in list(metrics):
                try:
                    value = float(m(sr.cpu(), v.hr[None], self.cfg.scale)[0])
                except WeightsError as e:  # a metric without its weights offline: leave it out
                    self.exp.log.warning("validation without %s: %s", m.name, e)
                    metrics.remove(m)
                    continue
                totals[m.name] = totals.get(m.name, 0.0) + value
        return {k: t / len(images) for k, t in totals.items()}

    # --- state ---------------------------------------------------------------------
    def state(self, steps_per_epoch: int) -> dict:
        return {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "best": dict(self.best),
            "gen": self.gen.own_state_dict(),
            "disc": state_without(self.disc, self.clip) if self.disc else {},
            "ema": self.ema.shadow if self.ema else {},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d else {},
            "scaler": self.scaler.state_dict(),
            **({"previous_sentence": self.previous_sentence} if self.previous_sentence is not None else {}),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "data": {"seed": self.cfg.seed, "steps_per_epoch": steps_per_epoch, "world": self.dist.world,
                     "batch_size": self.cfg.batch_size},
            "model_config": self.model_cfg.to_json(),
            "scale": self.cfg.scale,
        }

    def load(self, state: dict, steps_per_epoch: int) -> None:
        data = state["data"]
        now = {"seed": self.cfg.seed, "steps_per_epoch": steps_per_epoch, "world": self.dist.world,
               "batch_size": self.cfg.batch_size}
        if data != now:
            raise ConfigError(f"the checkpoint was written with data order {data}, this run has {now}; "
                              "resume with the same seed, batch size, dataset and number of processes")
        if state["model_config"] != self.model_cfg.to_json():
            raise ConfigError("the checkpoint's model config differs from this run's preset / --hr-crop")
        self.gen.load_state_dict(state["gen"], strict=False)
        if self.disc:
            self.disc.load_state_dict(state["disc"], strict=False)
            self.opt_d.load_state_dict(state["opt_d"])
        if self.ema:
            for k, v in state["ema"].items():
                self.ema.shadow[k].copy_(v)
        self.opt_g.load_state_dict(state["opt_g"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.bad_steps, self.best = state["step"], state["bad_steps"], dict(state["best"])
        previous = state.get("previous_sentence")
        self.previous_sentence = None if previous is None else previous.to(self.device)


def val_pair(rec: Record, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR cropped to a multiple of the scale, its bicubic LR), as the SR benchmarks make them."""
    im = open_rgb(rec)
    im = im.crop((0, 0, im.width - im.width % scale, im.height - im.height % scale))
    return to_tensor(im), to_tensor(downsample(im, scale))


@dataclass
class ValImage:
    """A validation image, decoded once per run: HR, its bicubic LR, PIL bicubic
    back up to HR size (the bar to beat), and the first caption."""

    hr: torch.Tensor
    lr: torch.Tensor
    bicubic: torch.Tensor
    caption: str


def load_validation(records: list[Record], scale: int) -> list[ValImage]:
    images = []
    for rec in records:
        hr, lr = val_pair(rec, scale)
        lr_im = Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        bicubic = to_tensor(lr_im.resize((hr.shape[2], hr.shape[1]), Image.BICUBIC))
        images.append(ValImage(hr, lr, bicubic, rec.captions[0]))
    return images


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
        # decoded once, on the process that validates
        self.val_images = load_validation(val[: cfg.val_images], cfg.scale) if dist.main else []
        self.trainer = Trainer(cfg, device, dist, exp)
        dataset = SRDataset(self.records, self.trainer.model_cfg.generator.hr_crop, cfg.scale, cfg.seed,
                            cfg.hflip, cfg.cache_images, cfg.caption_dropout)
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


def export_generator(checkpoint: Path, output: Path, ema: bool = True, weights_dir=None, half: bool = False) -> Path:
    """The generator file `upscale --weights` loads, from a full training state."""
    import json

    from clipsr_cli.train.state import load_state

    state, _ = load_state(Path(checkpoint))
    model = ModelConfig.from_dict(json.loads(state["model_config"]), origin=f"{checkpoint} model_config")
    gen = Generator(model, load_clip(model, weights_dir=weights_dir), state["scale"])
    weights = state["ema"] if ema and state["ema"] else state["gen"]
    gen.load_state_dict(weights, strict=False)
    save_generator(output, gen, {"weights": "ema" if weights is state["ema"] else "raw", "step": str(state["step"])},
                   half=half)
    return Path(output)

"""The adversarial training loop of CLIP-SR (DESIGN.md §1), from the same stages
`upscale` runs.

Per step: D first (hinge on real / fake / mismatched-caption pairs + MA-GP),
then G (L1 + VGG-19 perceptual + lambda_adv * (-D(C(SR), T) - alpha * cos)),
then the EMA.  With `pixel_adversarial_weight`, Real-ESRGAN's texture critic
(a U-Net on the full-size image) takes its own step after D, and its per-pixel
loss joins G's.  The paper's ablations are configuration: `--adversarial-weight
0` builds no discriminator; the presets' `stages.text_encoder = "none"` and
`stages.clip_vit = false` remove text and the CLIP-ViT.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsr_cli.model.clip import TextTower, load_clip
from clipsr_cli.model.config import ConfigError, ModelConfig, load_preset
from clipsr_cli.model.discriminator import Discriminator
from clipsr_cli.model.generator import Generator, state_without
from clipsr_cli.model.pixel_discriminator import UNetDiscriminator
from clipsr_cli.model.weights import WeightsError
from clipsr_cli.pipeline.devices import pick_precision
from clipsr_cli.plugins.registry import registry
from clipsr_cli.train import distributed
from clipsr_cli.train.config import TrainConfig
from clipsr_cli.train.data import ValImage
from clipsr_cli.train.experiment import Experiment
from clipsr_cli.train.losses import (
    PerceptualLoss,
    d_bce_loss,
    d_hinge_loss,
    g_adversarial,
    g_bce_loss,
    load_vgg19_features,
    ma_gp,
)
from clipsr_cli.train.text_cache import TextFeatureCache


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The preset, with the training crop of this run (it sets the encoder depth)."""
    model = load_preset(cfg.preset)
    if cfg.hr_crop:
        model = dataclasses.replace(model, generator=dataclasses.replace(model.generator, hr_crop=cfg.hr_crop))
        model.validate(f"--hr-crop {cfg.hr_crop}")
    return model


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


def adam(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, with PyTorch's fused kernel where it has one for the parameters'
    device (one pass over all tensors instead of a dozen small ops per tensor:
    7% of a tiny-preset step on the CPU, BENCHMARKS.md); the plain one elsewhere."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


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
        self.text_features = TextFeatureCache(self.gen.text.encode)
        self.disc = Discriminator(self.model_cfg, clip).to(device) if cfg.adversarial_weight > 0 else None
        self.perceptual = self._perceptual() if cfg.perceptual_weight > 0 else None
        self.ema = EMA(self.gen, cfg.ema_decay) if cfg.ema_decay > 0 else None
        betas = (cfg.beta1, cfg.beta2)
        self.g_params = self.gen.trainable_parameters()
        self.opt_g = adam(self.g_params, cfg.lr_g, betas)
        self.d_params = [p for p in self.disc.parameters() if p.requires_grad] if self.disc else []
        self.opt_d = adam(self.d_params, cfg.lr_d, betas) if self.disc else None
        # Real-ESRGAN's texture critic, beside (or instead of) the CLIP one
        self.pixel_disc = UNetDiscriminator(cfg.pixel_disc_channels).to(device) if cfg.pixel_adversarial_weight else None
        self.pixel_d_params = list(self.pixel_disc.parameters()) if self.pixel_disc else []
        self.opt_pixel_d = adam(self.pixel_d_params, cfg.lr_d, betas) if self.pixel_disc else None
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
        if c.mse_weight:
            out["mse"] = F.mse_loss(sr.float(), hr)
            total = total + c.mse_weight * out["mse"]
        if self.perceptual is not None:
            with self.autocast():
                out["perceptual"] = self.perceptual(sr, hr).float()
            total = total + c.perceptual_weight * out["perceptual"]
        if self.pixel_disc is not None:
            with self.autocast():
                out["pixel_adv"] = g_bce_loss(self.pixel_disc(sr).float())
            total = total + c.pixel_adversarial_weight * out["pixel_adv"]
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
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d), (self.opt_pixel_d, self.cfg.lr_d)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr * factor

    def train_step(self, batch: dict) -> dict[str, float]:
        hr = batch["hr"].to(self.device, non_blocking=True)
        lr = batch["lr"].to(self.device, non_blocking=True)
        captions = batch["captions"]
        feats = self.text_features(captions)
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
        if ok and self.pixel_disc is not None:
            with self.autocast():
                loss = d_bce_loss(self.pixel_disc(hr).float(), self.pixel_disc(sr.detach()).float())
            ok = self._apply(loss, self.pixel_d_params, self.opt_pixel_d)
            logs["loss_pixel_d"] = loss.detach()
            self.pixel_disc.requires_grad_(False)
        if ok:
            g = self.g_losses(hr, sr, sentence)
            ok = self._apply(g["loss_g"], self.g_params, self.opt_g)
            logs.update(g)
        for p in self.d_params + self.pixel_d_params:
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

    def init_from(self, spec: str) -> None:
        """Start from a trained generator of the same preset and scale (weights and EMA alike)."""
        from clipsr_cli.model.bundled import model_file
        from clipsr_cli.model.checkpoint import load_generator

        source = load_generator(model_file(Path(spec), self.cfg.weights_dir or None))
        def as_trained(cfg):  # prompt blocks as trained (older files leave the key empty)
            return dataclasses.replace(cfg.generator, prompt_blocks=cfg.generator.prompted_blocks)

        if as_trained(source.cfg) != as_trained(self.model_cfg) or source.scale != self.cfg.scale:
            raise ConfigError(f"--init-weights {spec}: a {source.cfg.name} x{source.scale} generator, but this run "
                              f"trains {self.model_cfg.name} x{self.cfg.scale} with other settings")
        self.gen.load_state_dict(source.own_state_dict(), strict=False)
        if self.ema is not None:
            for k, v in self.gen.own_state_dict().items():
                self.ema.shadow[k].copy_(v)

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
            "pixel_disc": self.pixel_disc.state_dict() if self.pixel_disc else {},
            "opt_pixel_d": self.opt_pixel_d.state_dict() if self.opt_pixel_d else {},
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
        if self.pixel_disc:
            if not state.get("pixel_disc"):
                raise ConfigError("the checkpoint was trained without the texture critic; resume with "
                                  "--pixel-adversarial-weight 0 or start a new --exp-dir")
            self.pixel_disc.load_state_dict(state["pixel_disc"])
            self.opt_pixel_d.load_state_dict(state["opt_pixel_d"])
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

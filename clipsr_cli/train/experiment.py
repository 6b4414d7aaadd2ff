"""The experiment folder: resolved config and command line, checkpoints,
sample grids, metrics as JSON lines, a readable log, optional TensorBoard.

    EXP/config.toml        the resolved training config (edit a copy, pass --config)
    EXP/command.txt        the command lines that ran here
    EXP/train.log          human-readable log
    EXP/metrics.jsonl      one JSON object per logged step / validation
    EXP/checkpoints/step_XXXXXXXX.safetensors   full training state
    EXP/model.safetensors  the generator `clipsr upscale --weights` loads (EMA when kept)
    EXP/best.safetensors   the generator at the best validation PSNR
    EXP/samples/step_XXXXXXXX.png   LR | SR | HR rows with their caption
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from clipsr_cli.io.files import atomic_write
from clipsr_cli.model.config import ConfigError
from clipsr_cli.train.config import TrainConfig
from clipsr_cli.train.state import StateError, load_state, save_state

CHECKPOINT_GLOB = "step_*.safetensors"


class Experiment:
    def __init__(self, root: Path, main: bool = True):
        self.root = Path(root)
        self.main = main  # only the main process writes
        self.checkpoints = self.root / "checkpoints"
        self.log = logging.getLogger(f"clipsr.train.{id(self)}")
        self.log.propagate = False
        self._tb = None

    # --- setup ---------------------------------------------------------------
    def check_new(self) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(f"{self.root} already holds an experiment; pass --resume to continue it "
                              "or choose another --exp-dir (nothing was overwritten)")

    def check_resumable(self) -> None:
        """--resume needs an experiment here (its config.toml), and, where it holds
        checkpoints, one that loads: it never starts over silently."""
        if not (self.root / "config.toml").is_file():
            what = "does not exist" if not self.root.exists() else "holds no experiment (no config.toml)"
            raise ConfigError(f"--resume: {self.root} {what}, so there is nothing to resume (nothing was "
                              "written); drop --resume to start a new run, in a new or empty folder")

    def open(self, cfg: TrainConfig) -> None:
        if not self.main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        (self.root / "samples").mkdir(exist_ok=True)
        atomic_write(self.root / "config.toml", lambda tmp: Path(tmp).write_text(cfg.to_toml()))
        with open(self.root / "command.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {shlex.join(sys.argv)}\n")
        handler = logging.FileHandler(self.root / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: tensorboard is not a dependency
                self.log.info("tensorboard is not installed; metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(str(self.root / "tensorboard"))

    def close(self) -> None:
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)
        if self._tb is not None:
            self._tb.close()

    # --- records -------------------------------------------------------------
    def record(self, step: int, values: dict, kind: str = "train") -> None:
        if not self.main:
            return
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    # --- checkpoints ---------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}.safetensors"

    def save_checkpoint(self, step: int, state: dict, keep: int) -> Path | None:
        if not self.main:
            return None
        path = self.checkpoint_path(step)
        save_state(path, state, {"step": str(step)})
        # the newest `keep`, this one among them; none newer than it is left (`latest_state`
        # set aside the unreadable ones it passed over), so this one is never rotated out
        for old in sorted(p for p in self.checkpoints.glob(CHECKPOINT_GLOB) if p != path)[: -max(keep, 1) + 1 or None]:
            old.unlink()
        return path

    def latest_state(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads (None where there are none yet).  Unreadable
        ones (truncated, corrupted) are reported and renamed `*.broken`, out of the
        rotation; when no checkpoint loads, it is an error: never a silent restart."""
        found = sorted(self.checkpoints.glob(CHECKPOINT_GLOB), reverse=True)
        broken = []
        for path in found:
            try:
                state, _ = load_state(path)
            except StateError as e:
                broken.append((path, e))
                continue
            for bad, e in broken:
                bad.rename(bad.with_name(bad.name + ".broken"))
                self.log.warning("skipping unreadable checkpoint (renamed *.broken): %s", e)
                print(f"warning: skipping unreadable checkpoint (renamed *.broken): {e}", file=sys.stderr)
            return state, path
        if broken:
            raise ConfigError(f"--resume: none of the {len(broken)} checkpoint(s) in {self.checkpoints} loads "
                              f"(newest: {broken[0][1]}); nothing was overwritten. Move them away to start over "
                              "in this folder, or train into another --exp-dir")
        return None

    # --- samples -------------------------------------------------------------
    def save_samples(self, step: int, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor,
                     captions: list[str]) -> Path | None:
        if not self.main:
            return None
        path = self.root / "samples" / f"step_{step:08d}.png"
        grid = sample_grid(lr, sr, hr, captions)
        atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
        return path


def _pil(x: torch.Tensor) -> Image.Image:
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def sample_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, captions: list[str],
                text_height: int = 14) -> Image.Image:
    """One row per image: LR (nearest-neighbour enlarged) | SR | HR, caption below."""
    h, w = hr.shape[-2:]
    rows = len(captions)
    grid = Image.new("RGB", (3 * w, rows * (h + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(rows):
        y = i * (h + text_height)
        for j, img in enumerate((lr[i], sr[i], hr[i])):
            tile = _pil(img)
            if tile.size != (w, h):
                tile = tile.resize((w, h), Image.NEAREST)
            grid.paste(tile, (j * w, y))
        draw.text((2, y + h + 1), captions[i][: 3 * w // 6], fill="black")
    return grid

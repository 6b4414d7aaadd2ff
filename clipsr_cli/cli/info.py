"""`clipsr info` and `clipsr plugins`: what a preset costs, and what is registered."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from clipsr_cli.cli.app import app, out, user_errors


@app.command()
@user_errors
def info(
    preset: str = typer.Option("paper", "--preset", help="Preset name or TOML file."),
    scale: Optional[list[int]] = typer.Option(None, "-s", "--scale", help="Scales (default: all)."),
):
    """Parameter counts and FLOPs per image of a preset (offline, no weights needed)."""
    from clipsr_cli.model.config import SCALES, check_scale, load_preset
    from clipsr_cli.model.info import describe

    cfg = load_preset(preset)
    rows = describe(cfg, [check_scale(s) for s in scale] if scale else SCALES)
    out.print(f"[bold]{cfg.name}[/bold]: {cfg.description}")
    table = Table()
    for col in ("scale", "LR -> SR", "trainable params", "frozen params (CLIP)", "GFLOPs / image",
                "GFLOPs / caption"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"x{r.scale}", f"{r.lr_size} -> {r.lr_size * r.scale}", f"{r.trainable / 1e6:.2f} M",
                      f"{r.frozen / 1e6:.2f} M", f"{r.image_gflops:.2f}", f"{r.text_gflops:.2f}")
    out.print(table)
    out.print("FLOPs: multiply-adds x 2, counted by torch.utils.flop_counter on the training LR size; "
              "a caption is encoded once per run, whatever the number of images; GFLOPs / caption for a "
              "14-token caption (the text tower runs on each caption's own length, at most 77).")


@app.command()
def plugins():
    """List every registered stage and the plugin that provides it."""
    from clipsr_cli.plugins.registry import KINDS, registry

    table = Table()
    for col in ("kind", "name", "plugin", "from"):
        table.add_column(col)
    for kind in KINDS:
        for name, entry in sorted(registry(kind).items()):
            table.add_row(kind, name, entry.plugin, entry.source)
    out.print(table)

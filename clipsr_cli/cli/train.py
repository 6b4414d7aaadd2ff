"""`clipsr train` (its options generated from TrainConfig) and `clipsr export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from clipsr_cli.cli.app import app, console, out, user_errors


def _train(config: Optional[Path], quiet: bool, **options):
    """Train CLIP-SR (GAN loop of the paper) on a dataset; every option is also a config key."""

    from clipsr_cli.pipeline.devices import pick_device
    from clipsr_cli.train import distributed
    from clipsr_cli.train.config import run_config
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.run import TrainingInterrupted, fit

    cfg = run_config(config, options)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dist = distributed.init_from_env(device.type)
    device = distributed.rank_device(device, dist)
    exp = Experiment(Path(cfg.exp_dir), main=dist.main)
    if dist.main and cfg.resume:
        exp.check_resumable()
    elif dist.main:
        exp.check_new()
    distributed.barrier(dist)
    show = dist.main and not quiet
    try:
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      "{task.fields[rate]}", TimeRemainingColumn(), "{task.fields[losses]}",
                      console=console, disable=not show) as progress:
            task = progress.add_task("train", total=None, rate="", losses="")

            def on_step(step: int, total: int, logs: dict) -> None:
                shown = {k: v for k, v in logs.items() if k in ("loss_g", "l1", "perceptual", "adv", "loss_d")}
                progress.update(task, completed=step, total=total, rate=f"{logs['it_per_s']:.2f} it/s",
                                losses=" ".join(f"{k} {v:.4f}" for k, v in shown.items()))

            try:
                trainer = fit(cfg, device, dist, exp, on_step=on_step)
            except TrainingInterrupted as e:
                progress.stop()
                console.print(str(e), style="yellow", markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
        if show:
            out.print(f"generator written to {exp.root / 'model.safetensors'} (step {trainer.step}); "
                      f"log: {exp.root / 'train.log'}")
    finally:
        exp.close()
        distributed.shutdown(dist)


def _register_train() -> None:
    """`clipsr train`: its options are generated from TrainConfig, so every
    config key is an option and no option lacks a key."""
    import dataclasses
    import inspect
    import typing

    from clipsr_cli.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--config", help="TOML file of training keys (see EXP/config.toml).")),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "-q", "--quiet", help="No live display.")),
    ]
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if hints[f.name] is bool else [flag]
        help_text = f"{f.metadata['help']} [config: {f.name}, default: {f.default!r}]"
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[hints[f.name]],
                                        default=typer.Option(None, *decls, help=help_text, show_default=False)))

    @user_errors
    def train(**kwargs):
        config, quiet = kwargs.pop("config"), kwargs.pop("quiet")
        _train(config, quiet, **kwargs)

    train.__signature__ = inspect.Signature(params)
    train.__annotations__ = {p.name: p.annotation for p in params}
    train.__doc__ = _train.__doc__
    app.command("train")(train)


_register_train()


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (EXP/checkpoints/step_*.safetensors); "
                                                "with --onnx any model --weights takes (a name, a file, a folder)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Generator file to write (.safetensors)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Write ONNX graphs instead: FILE.onnx (image) and "
                                                             "FILE.text.onnx (captions); needs clipsr[onnx]."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw weights instead of the EMA."),
    half: bool = typer.Option(False, "--half", help="Store weights as fp16 (half the size; loaded as fp32)."),
    no_clip: bool = typer.Option(False, "--no-clip", help="Leave a seeded random CLIP out of the file: loading "
                                                          "rebuilds it from its seed (6 MB less for the small preset)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder holding the CLIP weights."),
):
    """Write the generator file `upscale --weights` loads from a training checkpoint, or ONNX graphs of a model."""
    from clipsr_cli.errors import UsageError

    if (output is None) == (onnx is None):
        raise UsageError("give -o FILE.safetensors (a generator file) or --onnx FILE.onnx, one of them")
    if onnx is not None:
        from clipsr_cli.model.bundled import model_file
        from clipsr_cli.model.checkpoint import load_generator
        from clipsr_cli.model.onnx import export_onnx

        gen = load_generator(model_file(checkpoint, weights_dir), weights_dir=weights_dir)
        for path in export_onnx(gen, onnx):
            out.print(f"wrote {path}")
        return
    from clipsr_cli.train.run import export_generator

    path = export_generator(checkpoint, output, ema=not raw, weights_dir=weights_dir, half=half, with_clip=not no_clip)
    out.print(f"wrote {path}")

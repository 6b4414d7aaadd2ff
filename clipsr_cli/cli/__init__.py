"""The `clipsr` command line."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
from rich.table import Table

from clipsr_cli import __version__
from clipsr_cli.cli.options import config_option
from clipsr_cli.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Text-guided image super-resolution (CLIP-SR).")
weights_app = typer.Typer(no_args_is_help=True, help="List, locate and verify weights files.")
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)
out = Console()

MAX_OUTSCALE = 64.0  # x16, the largest network, resized x4 again: beyond it no output is an upscale worth making


class ImagesPerSecond(ProgressColumn):
    def render(self, task):
        return f"{task.speed:.2f} img/s" if task.speed else ""


def user_errors(fn):
    """Known failures (`UserError`) become one red line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _write_text(path: Path, text: str) -> None:
    """A report file, written atomically as the images are (a reader never sees half of it)."""
    from clipsr_cli.io.files import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def _version(value: bool):
    if value:
        out.print(f"clipsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    from clipsr_cli.pipeline.memory import keep_freed_memory

    keep_freed_memory()  # process-wide, once: big activation maps are reused, not re-faulted


def _write_upscale_json(path: Path, report, setup: dict, interrupted: bool = False) -> None:
    _write_text(path, json.dumps({
        "setup": setup,  # what made the outputs: a later reader can tell runs apart
        "done": [{"input": str(w.image), "output": str(w.output), "caption": w.caption} for w in report.done],
        "skipped": [{"input": str(o.image), "reason": o.reason, "kind": o.kind} for o in report.skipped],
        "failed": [{"input": str(o.image), "reason": o.reason, "kind": o.kind} for o in report.failed],
        "missing_captions": report.missing_captions,
        "stopped": report.stopped or None,
        "interrupted": interrupted,
    }, indent=2))


def _upscale_summary(report, policy, default_caption: str) -> Table:
    """Counts, each with why: skipped and failed inputs by kind (failures are
    also listed one per line above it; every input in --json)."""
    from clipsr_cli.pipeline.upscale import tally

    def why(outcomes) -> str:
        return ", ".join(f"{kind} ({n})" for kind, n in tally(outcomes))

    missing = {"error": "failed (--missing-caption error)", "empty": "upscaled with an empty caption",
               "default": f"upscaled with {default_caption!r}"}[policy.value] if report.missing_captions else ""
    inputs_done = len({w.image for w in report.done})
    table = Table(title="upscale summary")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("details")
    table.add_row("outputs written", str(len(report.done)),
                  f"from {inputs_done} input(s)" if inputs_done != len(report.done) else "")
    table.add_row("inputs skipped", str(len(report.skipped)), why(report.skipped))
    table.add_row("inputs failed", str(len(report.failed)), why(report.failed))
    table.add_row("missing captions", str(report.missing_captions), missing)
    return table


@app.command()
@user_errors
def upscale(
    input: str = typer.Argument(..., help="Image file, folder, or glob pattern."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Captions file: .json, .jsonl or .csv."),
    caption: Optional[str] = typer.Option(None, "--caption", help="One caption for every image."),
    missing_caption: str = typer.Option("error", "--missing-caption",
                                        help="When an image has no caption: error | empty | default."),
    default_caption: str = typer.Option("a photo", "--default-caption", help="Text for --missing-caption default."),
    scale: Optional[int] = typer.Option(None, "-s", "--scale", help="2, 4, 8 or 16 (default: the checkpoint's, else 4)."),
    outscale: Optional[float] = typer.Option(
        None, "--outscale",
        help="Output size over input size, any value > 0: the network's output resized (Real-ESRGAN's --outscale)."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="clipsr checkpoint (.safetensors), or a model's name (`clipsr weights list`)."),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help="Run a preset with untrained weights (no --weights, no default model)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder holding manifest weights files."),
    suffix: str = typer.Option("", "--suffix", help="Added to each output file name."),
    ext: Optional[str] = typer.Option(None, "--ext", help="png | jpg | webp (default: keep; png with alpha)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose outputs exist."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Descend into sub-folders."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps."),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="fp32 | bf16 | fp16 (default: half on CUDA, fp32 elsewhere)."),
    fp32: bool = typer.Option(False, "--fp32", help="Same as --precision fp32 (Real-ESRGAN's flag)."),
    shard_spec: Optional[str] = typer.Option(None, "--shard", help="K/N: process only shard K of N (0-based; under torchrun: RANK/WORLD_SIZE)."),
    tile: Optional[int] = typer.Option(None, "-t", "--tile",
                                       help="LR tile side for large images (0: never tile; default: from free memory)."),
    tile_pad: int = typer.Option(16, "--tile-pad", help="LR pixels of overlap between tiles (blended, no seams)."),
    batch_size: Optional[int] = typer.Option(
        None, "-b", "--batch-size",
        help="Same-size images upscaled together (default: as many as fit in memory, up to 8 on a CPU, 64 on a GPU)."),
    json_report: Optional[Path] = typer.Option(None, "--json", help="Write a machine-readable report."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress, notes or summary: errors and warnings only."),
    config: Optional[Path] = config_option(),
):
    """Upscale images, each steered by its caption."""
    from clipsr_cli.io.captions import Captions, MissingPolicy
    from clipsr_cli.model.checkpoint import checkpoint_config, load_generator, read_metadata
    from clipsr_cli.model.clip import load_clip
    from clipsr_cli.model.config import check_scale, load_preset
    from clipsr_cli.pipeline.devices import pick_device, pick_precision
    from clipsr_cli.train.distributed import launched, rank_device
    from clipsr_cli.io.files import check_writable_folder
    from clipsr_cli.errors import UsageError
    from clipsr_cli.pipeline.lanes import Lanes, default_lanes
    from clipsr_cli.model.generator import Generator
    from clipsr_cli.pipeline.plan import collect_inputs, parse_shard, shard
    from clipsr_cli.pipeline.upscale import Report, Upscaler, default_model, model_file, run

    if missing_caption not in MissingPolicy.__members__:
        raise UsageError(f"--missing-caption {missing_caption}: choose {' | '.join(MissingPolicy.__members__)}")
    policy = MissingPolicy(missing_caption)
    if fp32:
        if precision not in (None, "fp32"):
            raise UsageError(f"--fp32 and --precision {precision} disagree; give one of them")
        precision = "fp32"
    place = launched()  # under torchrun: this process's shard and GPU
    try:
        dev = rank_device(pick_device(device), place)
        dtype = pick_precision(precision, dev)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if ext is not None and ext.lower() not in ("png", "jpg", "jpeg", "webp"):
        raise UsageError(f"--ext {ext}: choose png, jpg or webp")
    for name, value, low in (("--tile", tile, 0), ("--tile-pad", tile_pad, 0), ("--batch-size", batch_size, 1)):
        if value is not None and value < low:
            raise UsageError(f"{name} {value}: must be >= {low}")
    if outscale is not None and not 0 < outscale <= MAX_OUTSCALE:  # also refuses nan and inf
        raise UsageError(f"--outscale {outscale}: must be > 0 and at most {MAX_OUTSCALE:g} "
                         "(2.5: outputs 2.5 times the input's size)")
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output}: a file, not a folder; give a folder for the results")
    if any(sep in suffix for sep in ("/", "\\", ":")):  # a part of a file name, never a path
        raise UsageError(f"--suffix {suffix!r}: no '/', '\\' or ':' in a suffix; use -o for another folder")
    root, images = collect_inputs(input, recursive)
    if shard_spec is None and place.world > 1:
        shard_spec = f"{place.rank}/{place.world}"
    if shard_spec is not None:
        images = shard(images, root, *parse_shard(shard_spec))
    if output.resolve() == root.resolve() and not suffix:
        raise UsageError(f"output folder {output} is the input folder; give another -o or a --suffix")
    caps = Captions(root, captions, caption, policy, default_caption)
    if captions is not None:
        caps.check_file_names(images, captions)
    caps.check_some_source(images)
    try:  # one error now rather than the same failure for every image after the model loads
        check_writable_folder(output)
    except OSError as e:
        raise UsageError(f"-o {output}: cannot write there ({e.strerror or e}); choose another output folder") from None

    if weights is None and preset is None:
        weights, note = default_model(scale or 4, weights_dir)
        if not quiet:
            console.print(f"[cyan]note:[/cyan] {note}", highlight=False)
    if weights is not None:
        weights = model_file(weights, weights_dir)
        _, ckpt_scale = checkpoint_config(read_metadata(weights))
        if scale is not None and scale != ckpt_scale:
            raise UsageError(f"--scale {scale} but {weights} is a x{ckpt_scale} model; "
                             f"drop --scale or use a x{scale} checkpoint")
        gen = load_generator(weights, weights_dir=weights_dir)
    else:
        cfg = load_preset(preset)
        gen = Generator(cfg, load_clip(cfg, weights_dir=weights_dir), check_scale(scale or 4))
        if not quiet:
            console.print(f"[yellow]note:[/yellow] no --weights: preset {cfg.name!r} with untrained "
                          "generator weights; the output shows the pipeline, not CLIP-SR quality")
    upscaler = Upscaler(gen, dev, warn=lambda m: console.print(f"[yellow]warning:[/yellow] {m}", highlight=False),
                        dtype=dtype, tile=tile, tile_pad=tile_pad, outscale=outscale)
    lanes = Lanes(*default_lanes(dev))
    setup = {"clipsr_version": __version__, "weights": str(weights) if weights is not None else None,
             "preset": gen.cfg.name, "scale": gen.scale, "outscale": upscaler.outscale, "device": str(dev),
             "precision": str(dtype).removeprefix("torch."), "tile": upscaler.tile, "tile_pad": upscaler.tile_pad,
             "shard": shard_spec, "missing_caption": policy.value}  # also in --json: what made the outputs
    if not quiet:
        resize = f" resized to x{outscale:g}" if upscaler.outscale is not None else ""
        console.print(f"{len(images)} image(s){f' (shard {shard_spec})' if shard_spec else ''}, x{setup['scale']}"
                      f"{resize}, preset {setup['preset']!r}, device {setup['device']}, {setup['precision']}, "
                      f"tiles of {upscaler.tile or 'any'} LR px, batch {batch_size or 'auto'}, {lanes.n} lane(s)")
    finished = 0  # inputs done with, for the message on Ctrl-C

    def advance() -> None:
        nonlocal finished
        finished += 1
        bar.advance(task)

    report = Report()
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), ImagesPerSecond(),
                  TimeRemainingColumn(), console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task("upscaling", total=len(images))
        try:
            run(upscaler, root, images, output, caps, suffix, ext and ext.lower(), skip_existing,
                progress=advance, batch_size=batch_size, lanes=lanes, report=report)
        except KeyboardInterrupt:
            # batches already running finish (their files are whole); queued ones are dropped
            console.print(f"[yellow]interrupted[/yellow] after {finished} of {len(images)} input(s); every "
                          "output written is complete: run the same command with --skip-existing to go on",
                          highlight=False, soft_wrap=True)
            if json_report:  # what was done before it: the report says it was interrupted
                _write_upscale_json(json_report, report, setup, interrupted=True)
            raise typer.Exit(130) from None
    for failure in report.failed:
        console.print(f"[red]failed:[/red] {failure.image}: {failure.reason}", highlight=False, soft_wrap=True)
    if report.stopped:
        console.print(f"[red]stopped:[/red] {report.stopped}", highlight=False, soft_wrap=True)
    if not quiet:
        console.print(_upscale_summary(report, policy, default_caption))
        console.print(f"results in {output}/")
    if json_report:
        _write_upscale_json(json_report, report, setup)
    if report.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def score(
    sr_dir: Optional[Path] = typer.Argument(None, help="Folder of super-resolved images."),
    ref: Optional[Path] = typer.Option(None, "--ref", help="Folder of reference (HR) images."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated names (see --list); default psnr,ssim with --ref, else niqe."),
    scale: Optional[int] = typer.Option(None, "-s", "--scale", help="Scale of the results: default crop border."),
    crop_border: Optional[int] = typer.Option(None, "--crop-border", help="Pixels cut from each edge (default: scale)."),
    suffix: str = typer.Option("", "--suffix", help="Suffix that upscale added to the SR names."),
    crop_to_common: bool = typer.Option(False, "--crop-to-common", help="Compare differently sized pairs on their common area."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Per-image results as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Per-image results as CSV."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder holding metric weights files."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Captions file (upscale formats) for clip_score."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML page into this folder."),
    clip_preset: str = typer.Option("paper", "--clip-preset", help="Preset whose CLIP computes clip_score."),
    list_metrics: bool = typer.Option(False, "--list", help="List the metrics and exit."),
    config: Optional[Path] = config_option(),
):
    """Score SR results: PSNR/SSIM against references (BasicSR's conventions), NIQE without."""
    import csv

    import numpy as np

    from clipsr_cli.io.images import ImageError
    from clipsr_cli.plugins.registry import lookup, registry
    from clipsr_cli.io.captions import read_caption_file
    from clipsr_cli.pipeline.prefetch import prefetch
    from clipsr_cli.pipeline.score import SetLevelScores, caption_lookup, load_pair, pair_folders, score_image
    from stages.metrics import clip_score
    from clipsr_cli.errors import UsageError
    from stages.metrics.fullref import Y_DEFINITION

    if list_metrics:
        table = Table()
        for col in ("metric", "better", "range", "needs --ref", "what"):
            table.add_column(col)
        for name, entry in sorted(registry("metric").items()):
            m = entry.factory
            table.add_row(name, m.direction, m.range,
                          "yes" if m.needs_reference else "no", m.description)
        out.print(table)
        return
    if weights_dir is not None:  # metrics resolve their files lazily, through the same variable
        import os

        from clipsr_cli.model.weights import ENV_DIR

        os.environ[ENV_DIR] = str(weights_dir)
    metrics = metrics or ("psnr,ssim" if ref is not None else "niqe")
    chosen = [lookup("metric", n.strip()).factory for n in metrics.split(",") if n.strip()]
    if sr_dir is None or not sr_dir.is_dir():
        raise UsageError(f"{sr_dir or 'SR_DIR'}: give the folder of results to score")
    if any(m.needs_reference for m in chosen) and ref is None:
        raise UsageError(f"{', '.join(m.name for m in chosen if m.needs_reference)} need --ref HR_DIR")
    if ref is not None and not ref.is_dir():
        raise UsageError(f"--ref {ref}: not a folder")
    if any(m.needs_captions for m in chosen) and captions is None:
        raise UsageError(f"{', '.join(m.name for m in chosen if m.needs_captions)} need --captions FILE")
    clip_score.PRESET["name"] = clip_preset
    caption_of = caption_lookup(read_caption_file(captions), sr_dir, suffix) if captions else None
    border = crop_border if crop_border is not None else (scale or 0)
    pairing = pair_folders(sr_dir, ref, suffix)
    for p in pairing.extra:
        console.print(f"[yellow]no reference:[/yellow] {p}", highlight=False)
    for p in pairing.missing:
        console.print(f"[yellow]no SR result:[/yellow] {p}", highlight=False)
    unavailable_metrics: dict[str, str] = {}  # name -> why: listed in the table and the JSON too

    def unavailable(m, e):
        unavailable_metrics[m.name] = str(e)
        console.print(f"[yellow]skipped {m.name}:[/yellow] {e}", highlight=False, soft_wrap=True)

    set_level = SetLevelScores(chosen, unavailable)
    rows, failed, kept = [], [], {}
    for (sr, hr), loaded in prefetch(lambda pair: load_pair(*pair, crop_to_common), pairing.pairs):
        if isinstance(loaded, ImageError):
            failed.append((sr, str(loaded)))
            continue
        if isinstance(loaded, Exception):
            raise loaded
        a, b = loaded
        row = {"image": str(sr.relative_to(sr_dir)), "reference": str(hr) if hr else ""}
        image_captions = caption_of(sr) if caption_of else None
        if caption_of and image_captions is None:
            console.print(f"[yellow]no caption:[/yellow] {sr}: "
                          f"{', '.join(m.name for m in chosen if m.needs_captions)} left out for it", highlight=False,
                          soft_wrap=True)
        try:
            row.update(score_image(a, b, chosen, border, image_captions, unavailable))
            if b is not None:
                set_level.add(a, b)
        except ValueError as e:  # e.g. an image too small for NIQE's blocks
            failed.append((sr, f"{sr}: {e}"))
            continue
        rows.append(row)
        if report is not None:
            from clipsr_cli.pipeline.report import render_panels

            kept[row["image"]] = render_panels(a, b, scale or 4)
    for sr, reason in failed:
        console.print(f"[red]failed:[/red] {reason}", highlight=False, soft_wrap=True)
    table = Table(title=f"{len(rows)} image(s) scored; {Y_DEFINITION}; crop border {border}")
    for col in ("metric", "mean", "std", "count", "better"):
        table.add_column(col, justify="right")
    folder_values = set_level.results()
    for name, value in folder_values.items():
        table.add_row(name, f"{value:.4f}", "-", str(len(rows)), lookup("metric", name).factory.direction)
    for m in (m for m in chosen if not m.set_level):
        values = [r[m.name] for r in rows if m.name in r]
        with np.errstate(invalid="ignore"):  # identical pairs give PSNR = inf, as in BasicSR
            mean = float(np.mean(values)) if values else float("nan")
            std = float(np.std(values)) if len(values) > 1 else 0.0
        table.add_row(m.name, f"{mean:.4f}", f"{std:.4f}", str(len(values)), m.direction)
    for name in unavailable_metrics:
        table.add_row(name, "unavailable", "-", "0", lookup("metric", name).factory.direction)
    out.print(table)
    if json_out:
        _write_text(json_out, json.dumps({"crop_border": border, "y_channel": Y_DEFINITION, "images": rows,
                                        "set_metrics": folder_values, "unavailable_metrics": unavailable_metrics,
                                        "failed": [{"image": str(s), "reason": r} for s, r in failed],
                                        "no_reference": [str(p) for p in pairing.extra],
                                        "no_result": [str(p) for p in pairing.missing]}, indent=2))
    if csv_out:
        table_text = io.StringIO(newline="")
        per_image = [m.name for m in chosen if not m.set_level]
        writer = csv.DictWriter(table_text, fieldnames=["image", "reference", *per_image], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        _write_text(csv_out, table_text.getvalue())
    if report is not None:
        from clipsr_cli.pipeline.report import write_report

        page = write_report(report, rows, kept, [m for m in chosen if not m.set_level], f"clipsr score: {sr_dir}")
        console.print(f"report: {page}")
    if failed or unavailable_metrics:  # a script must not take a partial table for the whole
        raise typer.Exit(1)


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


@weights_app.command("list")
def weights_list():
    """Every weights file clipsr knows, and whether it is available here."""
    from clipsr_cli.model.weights import cache_dir, manifest

    table = Table()
    for col in ("name", "file", "in cache", "source"):
        table.add_column(col, overflow="fold")
    for name, entry in manifest().items():
        present = "yes" if (cache_dir() / entry.filename).is_file() else "no"
        table.add_row(name, entry.filename, present, entry.url)
    out.print(table)
    out.print(f"cache: {cache_dir()}")


@weights_app.command("fetch")
@user_errors
def weights_fetch(
    name: str = typer.Argument(..., help="Manifest name (see `clipsr weights list`)."),
    path: Optional[Path] = typer.Option(None, "--path", help="Verify this file instead of searching."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder to look in first."),
):
    """Find (or download) a weights file, verify its sha256 and print its path."""
    from clipsr_cli.model.weights import resolve

    out.print(str(resolve(name, path=path, weights_dir=weights_dir)))


def _train(config: Optional[Path], quiet: bool, **options):
    """Train CLIP-SR (GAN loop of the paper) on a dataset; every option is also a config key."""

    from clipsr_cli.train import distributed
    from clipsr_cli.pipeline.devices import pick_device
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.config import run_config
    from clipsr_cli.train.trainer import fit

    cfg = run_config(config, options)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dist = distributed.init_from_env(device.type)
    device = distributed.rank_device(device, dist)
    exp = Experiment(Path(cfg.exp_dir), main=dist.main)
    if not cfg.resume and dist.main:
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

            trainer = fit(cfg, device, dist, exp, on_step=on_step)
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
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (EXP/checkpoints/step_*.safetensors)."),
    output: Path = typer.Option(..., "-o", "--output", help="Generator file to write (.safetensors)."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw weights instead of the EMA."),
    half: bool = typer.Option(False, "--half", help="Store weights as fp16 (half the size; loaded as fp32)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder holding the CLIP weights."),
):
    """Write the generator file `upscale --weights` loads from a training checkpoint."""
    from clipsr_cli.train.trainer import export_generator

    path = export_generator(checkpoint, output, ema=not raw, weights_dir=weights_dir, half=half)
    out.print(f"wrote {path}")


def main():
    app()

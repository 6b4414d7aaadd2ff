"""`clipsr upscale`: options checked up front, the model loaded once, the batch
run (`pipeline/upscale.py`) shown with a progress bar, a summary and `--json`."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from clipsr_cli import __version__
from clipsr_cli.cli.app import ImagesPerSecond, app, check_report_path, console, user_errors, write_text
from clipsr_cli.cli.options import config_option
from clipsr_cli.errors import UsageError

MAX_OUTSCALE = 64.0  # x16, the largest network, resized x4 again: beyond it no output is an upscale worth making


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
        None, "--weights", help="A generator or training checkpoint (.safetensors), an experiment folder, or a model's name "
                             "(`clipsr weights list`).  Default: the real model of the scale (--real)."),
    real: bool = typer.Option(False, "--real", help="The bundled real-world model, the default: the clean model on "
                                                   "images without JPEG traces, denoising by the JPEG quality on "
                                                   "others (--denoise-strength auto)."),
    denoise_strength: Optional[str] = typer.Option(
        None, "--denoise-strength", help="0..1: the clean and real-world models blended (Real-ESRGAN's option); "
                                         "0 keeps the most texture, 1 removes the most noise; auto: each image's "
                                         "from the JPEG quality its pixels show."),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help="Run a preset with untrained weights (no --weights, no default model)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder holding manifest weights files."),
    suffix: str = typer.Option("", "--suffix", help="Added to each output file name."),
    ext: Optional[str] = typer.Option(None, "--ext", help="png | jpg | webp (default: keep; png with alpha)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose outputs exist."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Descend into sub-folders."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps."),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="fp32 | bf16 | fp16 (default: half on CUDA; on a CPU bf16 where it has AMX or AVX512-BF16 and measures faster, else fp32)."),
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
    from clipsr_cli.api import load_model, pick
    from clipsr_cli.io.captions import Captions, MissingPolicy
    from clipsr_cli.pipeline.host_workers import HostWorkers
    from clipsr_cli.pipeline.lanes import Lanes, default_lanes

    if missing_caption not in MissingPolicy.__members__:
        raise UsageError(f"--missing-caption {missing_caption}: choose {' | '.join(MissingPolicy.__members__)}")
    policy = MissingPolicy(missing_caption)
    precision = _precision(precision, fp32)
    pick(device, precision)  # a device or precision this machine lacks: said before anything runs
    _check_options(ext, tile, tile_pad, batch_size, outscale, output, suffix)
    root, images, shard_spec = _inputs(input, recursive, shard_spec, output, suffix)
    check_report_path(json_report, "--json", images)
    caps = Captions(root, captions, caption, policy, default_caption)
    caps.check_inputs(images)
    _check_output_folder(output)
    weights, denoise_strength = _real(real, weights, preset, scale, denoise_strength)
    model = load_model(weights, preset=preset, scale=scale, device=device, precision=precision,
                       weights_dir=weights_dir, tile=tile, tile_pad=tile_pad, outscale=outscale,
                       denoise_strength=denoise_strength,
                       note=None if quiet else lambda m: console.print(f"[cyan]note:[/cyan] {m}", highlight=False),
                       warn=lambda m: console.print(f"[yellow]warning:[/yellow] {m}", highlight=False))
    lanes = Lanes(*default_lanes(model.device))
    host = HostWorkers.for_run(model.device, len(images))
    setup = _setup(model, shard_spec, policy)
    if not quiet:
        resize = f" resized to x{outscale:g}" if setup["outscale"] is not None else ""
        console.print(f"{len(images)} image(s){f' (shard {shard_spec})' if shard_spec else ''}, x{setup['scale']}"
                      f"{resize}, preset {setup['preset']!r}, device {setup['device']}, {setup['precision']} "
                      f"({_precision_why(model, precision)}), "
                      f"tiles of {setup['tile'] or 'any'} LR px, batch {batch_size or 'auto'}, {lanes.n} lane(s)"
                      f"{f', {host.describe()}' if host else ''}")
    try:
        report = _run_with_progress(model.upscaler, lanes, root, images, output, caps, suffix, ext and ext.lower(),
                                    skip_existing, batch_size, quiet, json_report, setup, host)
    finally:
        if host is not None:
            host.close()
    _finish(report, policy, default_caption, output, quiet, json_report, setup)


def _real(real: bool, weights: Path | None, preset: str | None, scale: int | None,
          denoise_strength: str | None) -> tuple[Path | None, float | str | None]:
    """--real: the bundled real-world model of the scale, --denoise-strength auto."""
    from clipsr_cli.api import parse_strength
    from clipsr_cli.model.bundled import AUTO

    if not real:
        return weights, None if denoise_strength is None else parse_strength(denoise_strength)
    if weights is not None or preset is not None:
        raise UsageError("--real picks the bundled real-world model: drop --weights/--preset")
    if denoise_strength is not None:
        raise UsageError(f"--real is --denoise-strength {AUTO}: give one of them")
    return None, AUTO


def _precision(precision: str | None, fp32: bool) -> str | None:
    if fp32 and precision not in (None, "fp32"):
        raise UsageError(f"--fp32 and --precision {precision} disagree; give one of them")
    return "fp32" if fp32 else precision


def _precision_why(model, precision: str | None) -> str:
    """Why the run computes in its dtype (the first line says it)."""
    from clipsr_cli.pipeline.devices import choose_precision

    dtype, why = choose_precision(precision, model.device)
    return why if dtype == model.dtype else "the only precision of this model's runtime"


def _setup(model, shard_spec: str | None, policy) -> dict:
    """What makes the outputs (also in --json, so a later reader can tell runs apart)."""
    up = model.upscaler
    return {"clipsr_version": __version__, "weights": str(model.weights) if model.weights else None,
            "preset": model.preset, "scale": model.scale, "outscale": up.outscale, "device": str(model.device),
            "denoise_strength": model.denoise_strength,
            "precision": str(model.dtype).removeprefix("torch."), "tile": up.tile, "tile_pad": up.tile_pad,
            "shard": shard_spec, "missing_caption": policy.value}


def _check_options(ext, tile, tile_pad, batch_size, outscale, output: Path, suffix: str) -> None:
    """Every option a run could only trip over later, refused before the model loads."""
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


def _check_output_folder(output: Path) -> None:
    """One error now rather than the same failure for every image after the model loads."""
    from clipsr_cli.io.files import check_writable_folder

    try:
        check_writable_folder(output)
    except OSError as e:
        raise UsageError(f"-o {output}: cannot write there ({e.strerror or e}); choose another output folder") from None


def _inputs(input: str, recursive: bool, shard_spec: str | None, output: Path, suffix: str):
    """The input root, this process's images (its shard under torchrun) and the shard said."""
    from clipsr_cli.pipeline.plan import collect_inputs, parse_shard, shard
    from clipsr_cli.train.distributed import launched

    root, images = collect_inputs(input, recursive)
    place = launched()
    if shard_spec is None and place.world > 1:
        shard_spec = f"{place.rank}/{place.world}"
    if shard_spec is not None:
        images = shard(images, root, *parse_shard(shard_spec))
    if output.resolve() == root.resolve() and not suffix:
        raise UsageError(f"output folder {output} is the input folder; give another -o or a --suffix")
    return root, images, shard_spec


def _run_with_progress(upscaler, lanes, root, images, output, caps, suffix, ext, skip_existing, batch_size,
                       quiet, json_report, setup, host=None):
    """The batch run behind a progress bar; on Ctrl-C, what was done is said (and
    written to --json) before exit 130."""
    from clipsr_cli.pipeline.upscale import Report, run

    report, finished = Report(), [0]  # inputs done with, for the message on Ctrl-C
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), ImagesPerSecond(),
                  TimeRemainingColumn(), console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task("upscaling", total=len(images))

        def advance() -> None:
            finished[0] += 1
            bar.advance(task)

        try:
            run(upscaler, root, images, output, caps, suffix, ext, skip_existing,
                progress=advance, batch_size=batch_size, lanes=lanes, report=report, host=host)
        except KeyboardInterrupt:
            # batches already running have finished and are counted; queued ones were dropped.
            # Further Ctrl-Cs change nothing now: one message, exit 130
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            console.print(f"[yellow]interrupted[/yellow] after {finished[0]} of {len(images)} input(s); every "
                          "output written is complete: run the same command with --skip-existing to go on",
                          highlight=False, soft_wrap=True)
            if json_report:  # what was done before it: the report says it was interrupted
                _write_json(json_report, report, setup, interrupted=True)
            raise typer.Exit(130) from None
    return report


def _finish(report, policy, default_caption: str, output: Path, quiet: bool, json_report, setup) -> None:
    for failure in report.failed:
        console.print(f"[red]failed:[/red] {failure.image}: {failure.reason}", highlight=False, soft_wrap=True)
    if report.stopped:
        console.print(f"[red]stopped:[/red] {report.stopped}", highlight=False, soft_wrap=True)
    if not quiet:
        console.print(_summary(report, policy, default_caption))
        console.print(f"results in {output}/")
    if json_report:
        _write_json(json_report, report, setup)
    if report.failed:
        raise typer.Exit(1)


def _write_json(path: Path, report, setup: dict, interrupted: bool = False) -> None:
    write_text(path, json.dumps({
        "setup": setup,  # what made the outputs: a later reader can tell runs apart
        "done": [{"input": str(w.image), "output": str(w.output), "caption": w.caption} for w in report.done],
        "skipped": [{"input": str(o.image), "reason": o.reason, "kind": o.kind} for o in report.skipped],
        "failed": [{"input": str(o.image), "reason": o.reason, "kind": o.kind} for o in report.failed],
        "missing_captions": report.missing_captions,
        "stopped": report.stopped or None,
        "interrupted": interrupted,
    }, indent=2))


def _summary(report, policy, default_caption: str) -> Table:
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

"""`clipsr score`: pair SR results with references, score them with the chosen
metrics (`pipeline/score.py`), show a table and write --json / --csv / --report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from clipsr_cli.cli.app import app, check_report_path, console, out, user_errors, write_text
from clipsr_cli.cli.options import config_option
from clipsr_cli.errors import UsageError


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
    from clipsr_cli.io.captions import CaptionTable, read_caption_file
    from clipsr_cli.pipeline.score import FolderScoring, caption_lookup, pair_folders

    if list_metrics:
        return out.print(_metric_table())
    if weights_dir is not None:  # metrics resolve their files lazily, through the same variable
        import os

        from clipsr_cli.model.weights import ENV_DIR

        os.environ[ENV_DIR] = str(weights_dir)
    chosen = _chosen_metrics(metrics or ("psnr,ssim" if ref is not None else "niqe"), clip_preset)
    _check_folders(sr_dir, ref, captions, chosen)
    caption_of = caption_lookup(CaptionTable(read_caption_file(captions)), sr_dir, suffix) if captions else None
    border = crop_border if crop_border is not None else (scale or 0)
    pairing = pair_folders(sr_dir, ref, suffix)
    read = [p for pair in pairing.pairs for p in pair if p is not None] + pairing.extra + pairing.missing
    for option, path in (("--json", json_out), ("--csv", csv_out)):
        check_report_path(path, option, read)
    check_report_path(report, "--report", folder=True)
    for p in pairing.extra:
        console.print(f"[yellow]no reference:[/yellow] {p}", highlight=False)
    for p in pairing.missing:
        console.print(f"[yellow]no SR result:[/yellow] {p}", highlight=False)
    scoring = FolderScoring(chosen, border, caption_of, crop_to_common, (scale or 4) if report else None,
                            warn=lambda text: console.print(text, highlight=False, soft_wrap=True))
    result = scoring.run(sr_dir, pairing.pairs)
    for _, reason in result.failed:
        console.print(f"[red]failed:[/red] {reason}", highlight=False, soft_wrap=True)
    out.print(_summary_table(result, chosen, border))
    _write_reports(result, chosen, border, pairing, sr_dir, json_out, csv_out, report)
    if result.failed or result.unavailable:  # a script must not take a partial table for the whole
        raise typer.Exit(1)


def _metric_table() -> Table:
    from clipsr_cli.api import list_metrics

    table = Table()
    for col in ("metric", "better", "range", "needs --ref", "what"):
        table.add_column(col)
    for name, m in list_metrics().items():
        table.add_row(name, m.direction, m.range, "yes" if m.needs_reference else "no", m.description)
    return table


def _chosen_metrics(names: str, clip_preset: str) -> list:
    """The registered metrics named, each with the options the command sets."""
    from clipsr_cli.api import create_metric

    chosen = [create_metric(n.strip()) for n in names.split(",") if n.strip()]
    return [m.with_options(preset=clip_preset) if "preset" in m.options else m for m in chosen]


def _check_folders(sr_dir: Path | None, ref: Path | None, captions: Path | None, chosen: list) -> None:
    if sr_dir is None or not sr_dir.is_dir():
        raise UsageError(f"{sr_dir or 'SR_DIR'}: give the folder of results to score")
    if any(m.needs_reference for m in chosen) and ref is None:
        raise UsageError(f"{', '.join(m.name for m in chosen if m.needs_reference)} need --ref HR_DIR")
    if ref is not None and not ref.is_dir():
        raise UsageError(f"--ref {ref}: not a folder")
    if any(m.needs_captions for m in chosen) and captions is None:
        raise UsageError(f"{', '.join(m.name for m in chosen if m.needs_captions)} need --captions FILE")


def _summary_table(result, chosen: list, border: int) -> Table:
    import numpy as np

    from clipsr_cli.plugins.conventions import Y_DEFINITION
    from clipsr_cli.plugins.registry import lookup

    rows = result.rows
    table = Table(title=f"{len(rows)} image(s) scored; {Y_DEFINITION}; crop border {border}")
    for col in ("metric", "mean", "std", "count", "better"):
        table.add_column(col, justify="right")
    for name, value in result.folder_values.items():
        table.add_row(name, f"{value:.4f}", "-", str(len(rows)), lookup("metric", name).factory.direction)
    for m in (m for m in chosen if not m.set_level):
        values = [r[m.name] for r in rows if m.name in r]
        finite = [v for v in values if np.isfinite(v)]
        mean = f"{np.mean(finite):.4f}" if finite else ("inf" if values else "-")
        std = f"{np.std(finite):.4f}" if len(finite) > 1 else "-" if not finite else "0.0000"
        table.add_row(m.name, mean, std, str(len(values)), m.direction)
        if len(finite) < len(values):  # identical pairs: PSNR = inf, as in BasicSR
            table.caption = (f"{m.name}: {len(values) - len(finite)} image(s) identical to their reference "
                             "(infinite; null in --json), left out of the mean and std")
    for name in result.unavailable:
        table.add_row(name, "unavailable", "-", "0", lookup("metric", name).factory.direction)
    return table


def _write_reports(result, chosen, border, pairing, sr_dir, json_out, csv_out, report) -> None:
    import csv
    import io

    from clipsr_cli.pipeline.score import undefined_values
    from clipsr_cli.plugins.conventions import Y_DEFINITION

    per_image = [m for m in chosen if not m.set_level]
    if json_out:
        rows = []
        for row in result.rows:  # strict JSON: no Infinity, a null and the reason instead
            undefined = undefined_values(row)
            rows.append({k: None if k in undefined else v for k, v in row.items()}
                        | ({"undefined": undefined} if undefined else {}))
        write_text(json_out, json.dumps({
            "crop_border": border, "y_channel": Y_DEFINITION, "images": rows,
            "set_metrics": {k: v if math.isfinite(v) else None for k, v in result.folder_values.items()}, "unavailable_metrics": result.unavailable,
            "failed": [{"image": str(s), "reason": r} for s, r in result.failed],
            "no_reference": [str(p) for p in pairing.extra], "no_result": [str(p) for p in pairing.missing]},
            indent=2, allow_nan=False))
    if csv_out:
        table_text = io.StringIO(newline="")
        writer = csv.DictWriter(table_text, fieldnames=["image", "reference", *[m.name for m in per_image]],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)
        write_text(csv_out, table_text.getvalue())
    if report is not None:
        from clipsr_cli.pipeline.report import write_report

        page = write_report(report, result.rows, result.panels, per_image, f"clipsr score: {sr_dir}",
                            result.bicubic)
        console.print(f"report: {page}")

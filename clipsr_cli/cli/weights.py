"""`clipsr weights list | fetch`: the manifest's files, found, verified or downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from clipsr_cli.cli.app import out, user_errors, weights_app


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

"""What every subcommand shares: the Typer app, the two consoles, the error
boundary (a UserError is one red line and exit 2), atomic report files."""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import ProgressColumn

from clipsr_cli import __version__
from clipsr_cli.errors import UsageError, UserError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Text-guided image super-resolution (CLIP-SR).")
weights_app = typer.Typer(no_args_is_help=True, help="List, locate and verify weights files.")
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)
out = Console()


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


def write_text(path: Path, text: str) -> None:
    """A report file, written atomically as the images are (a reader never sees half of it)."""
    from clipsr_cli.io.files import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def check_report_path(path: Path | None, option: str, protected=(), folder: bool = False) -> None:
    """A report's path, checked before any work: not an existing folder (or, for
    a `folder` report, not a file), not under a file, and never one of the run's
    inputs or references (`protected`) or any existing image: a report
    overwrites what is at its path."""
    from clipsr_cli.io.images import IMAGE_EXTS

    if path is None:
        return
    kind = "folder" if folder else "file"
    if not folder and path.is_dir():
        raise UsageError(f"{option} {path}: a folder; give a file name for the report, such as {path / 'report.json'}")
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: a file; give a folder for the report")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"{option} {path}: {blocking} is a file, so no {kind} can be made under it; "
                         "give another path")
    if folder:
        return
    resolved = path.resolve()
    if any(resolved == Path(p).resolve() for p in protected):
        raise UsageError(f"{option} {path}: that is one of the images this run reads; give another path")
    if path.exists() and path.suffix.lower() in IMAGE_EXTS:
        raise UsageError(f"{option} {path}: an existing image, which the report would replace; give another path")


def _version(value: bool):
    if value:
        out.print(f"clipsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    from clipsr_cli.pipeline.memory import keep_freed_memory

    keep_freed_memory()  # process-wide, once: big activation maps are reused, not re-faulted

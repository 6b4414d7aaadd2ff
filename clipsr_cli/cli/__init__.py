"""The `clipsr` command line: one module per subcommand, all on one Typer app."""

from clipsr_cli.cli.app import app

# each module registers its commands: imported in the order `clipsr --help` lists them
from clipsr_cli.cli import upscale, score, info, weights, train  # noqa: F401, E402


def main():
    app()

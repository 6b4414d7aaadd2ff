"""Built-in model presets: the TOML files beside this module."""

from pathlib import Path

from clipsr_cli.plugins.hookspecs import hookimpl

PRESET_DIR = Path(__file__).parent


@hookimpl
def register_presets(register):
    for path in sorted(PRESET_DIR.glob("*.toml")):
        register(path.stem, str(path))

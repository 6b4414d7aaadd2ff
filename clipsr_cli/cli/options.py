"""`--config FILE.toml` for a command whose options are written out by hand
(`upscale`, `score`; `train` generates its options from its config class).

The file's keys are the command's long option names with `_` for `-`
(`batch_size = 4` for `--batch-size 4`).  They become Click's default map:
an option given on the command line wins, an option left unset takes the
file's value, then its own default; each value is checked by the option's
own type (an error names the option).  Paths are as on the command line:
relative to the current folder.
"""

from __future__ import annotations

from pathlib import Path

import typer

from clipsr_cli.model.config import ConfigError, _check_keys, read_toml

HELP = "TOML file of option values (keys: the long option names, _ for -); options given here win."


def config_keys(command) -> dict[str, str]:
    """Config key -> parameter name, for every long option of a Click command
    but --config and --help.  (By attributes: recent Typer vendors Click, so
    its classes are not those of an installed `click`.)"""
    keys = {}
    for param in command.params:
        long = next((o for o in param.opts if o.startswith("--")), None)
        if param.param_type_name == "option" and long not in (None, "--config", "--help"):
            keys[long[2:].replace("-", "_")] = param.name
    return keys


def load_config_defaults(ctx: typer.Context, value: Path | None) -> Path | None:
    """Eager callback of `--config`: the file's values as the command's defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    if not value.is_file():
        raise typer.BadParameter(f"no such file: {value}", ctx=ctx, param_hint="--config")
    try:
        data = read_toml(value)
        keys = config_keys(ctx.command)
        _check_keys(data, set(keys), str(value))
    except ConfigError as e:
        raise typer.BadParameter(str(e), ctx=ctx, param_hint="--config") from None
    ctx.default_map = {**(ctx.default_map or {}), **{keys[k]: v for k, v in data.items()}}
    return value


def config_option():
    return typer.Option(None, "--config", help=HELP, is_eager=True, callback=load_config_defaults)

"""The hooks a clipsr plugin can implement.

Each hook receives a ``register(name, factory)`` callable and registers zero or
more named stages of one kind.  The built-in stages in ``stages/`` are plugins
like any other, loaded through the ``clipsr`` entry-point group.
"""

import pluggy

hookspec = pluggy.HookspecMarker("clipsr")
hookimpl = pluggy.HookimplMarker("clipsr")


@hookspec
def register_caption_sources(register):
    """Caption file readers: ``register(name, reader)``; reader(path) -> {relpath: [captions]}."""


@hookspec
def register_text_encoders(register):
    """Text encoding + prompt prediction: ``register(name, factory)``; factory(config, clip) -> module."""


@hookspec
def register_refiners(register):
    """Image encoder + TIFBlock refinement: ``register(name, factory)``; factory(config, clip, scale) -> module."""


@hookspec
def register_upsamplers(register):
    """Feature-to-image upsamplers: ``register(name, factory)``; factory(config, scale, in_channels) -> module."""


@hookspec
def register_metrics(register):
    """Image quality metrics: ``register(name, factory)``."""


@hookspec
def register_datasets(register):
    """Training datasets: ``register(name, factory)``."""


@hookspec
def register_degradations(register):
    """How training makes an LR from an HR crop: ``register(name, factory)``;
    factory(params_toml_path_or_None) -> Degradation (see protocols.py)."""


@hookspec
def register_presets(register):
    """Model presets: ``register(name, path_to_toml)``."""

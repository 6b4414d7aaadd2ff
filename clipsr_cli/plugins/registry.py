"""Plugin manager and the per-kind registries built from it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from clipsr_cli.errors import UserError
from clipsr_cli.plugins import hookspecs
from clipsr_cli.plugins.protocols import check_registered

ENTRY_POINT_GROUP = "clipsr"

# kind -> hook name.  The kind is what users and errors talk about.
KINDS = {
    "caption_source": "register_caption_sources",
    "text_encoder": "register_text_encoders",
    "refiner": "register_refiners",
    "upsampler": "register_upsamplers",
    "metric": "register_metrics",
    "dataset": "register_datasets",
    "preset": "register_presets",
    "degradation": "register_degradations",
}


class UnknownStage(UserError, LookupError):
    """A stage name that no registered plugin provides."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Any
    plugin: str  # plugin name as pluggy knows it
    source: str  # distribution that provided it, or "(registered at runtime)"


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("clipsr")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def _sources(pm: pluggy.PluginManager) -> dict[int, str]:
    sources = {}
    for plugin, dist in pm.list_plugin_distinfo():
        sources[id(plugin)] = f"{dist.project_name} {dist.version}"
    return sources


def registry(kind: str) -> dict[str, Entry]:
    """All stages of one kind, by name.  Built fresh each call (cheap) so that
    plugins registered or unregistered at runtime are seen at once."""
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; kinds: {', '.join(KINDS)}")
    pm = get_plugin_manager()
    sources = _sources(pm)
    found: dict[str, Entry] = {}
    hook = getattr(pm.hook, KINDS[kind])
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        source = sources.get(id(impl.plugin), "(registered at runtime)")

        def register(name: str, factory: Callable, _p=plugin_name, _s=source) -> None:
            if name in found:
                raise ValueError(
                    f"{kind} {name!r} is registered twice: by {found[name].plugin} and by {_p}"
                )
            check_registered(kind, name, factory, _p)
            found[name] = Entry(kind, name, factory, _p, _s)

        impl.function(register=register)
    return found


def lookup(kind: str, name: str) -> Entry:
    entries = registry(kind)
    if name not in entries:
        available = ", ".join(sorted(entries)) or "none"
        raise UnknownStage(f"unknown {kind.replace('_', ' ')} {name!r}; available: {available}")
    return entries[name]

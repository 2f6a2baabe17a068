"""The plugin manager: built-ins, entry points of group ``wconv``, and family-restricted hook calls."""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import InputError

# Core's default stages (one concern each) and layouts, then the built-in families under their entry-point names.
CORE_PLUGINS = {
    "wconv.conversion": "wconv.conversion.defaults",
    "wconv.conversion.coreai": "wconv.conversion.coreai",
    "wconv.compression": "wconv.compress.defaults",
    "wconv.compression.coreai": "wconv.compress.coreai",
    "wconv.verification": "wconv.verify.defaults",
    "wconv.verification.coreai": "wconv.verify.coreai",
    "wconv.layouts.whispercpp": "wconv.layouts.whispercpp",
    "wconv.layouts.coreml": "wconv.layouts.coreml",
    "wconv.layouts.whisperkit": "wconv.layouts.whisperkit",
    "wconv.layouts.coreai": "wconv.layouts.coreai",
}
BUILTIN_PLUGINS = {
    **CORE_PLUGINS,
    "openai": "wconv.plugins.openai_whisper",
    "ct2": "wconv.plugins.ct2_whisper",
    "hf": "wconv.plugins.hf_whisper",
    "distil": "wconv.plugins.distil_whisper",
    "ggml": "wconv.plugins.ggml_whisper",  # asked first: it recognises its files by their magic
}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for wconv; ``broken`` maps installed plugins that failed to import or register to why."""

    def __init__(self):
        super().__init__("wconv")
        self.add_hookspecs(hookspecs)
        self.broken: dict[str, str] = {}


def get_plugin_manager(*, entrypoints: bool = True, builtins: bool = True, extra: Iterable[object] = ()) -> PluginManager:
    """A new plugin manager with the hook specs, built-ins, installed entry points and ``extra``.

    ``WCONV_DISABLE_PLUGINS=a,b`` blocks entry points by name. An installed plugin that fails to import
    or register (a hook name that is not a spec, a misspelling) is left out with one warning on stderr;
    such an ``extra`` plugin fails here with ``PluginValidationError``.
    """
    pm = PluginManager()
    if builtins:
        for name, module in BUILTIN_PLUGINS.items():
            pm.register(importlib.import_module(module), name)
    if entrypoints:
        for name in filter(None, os.environ.get("WCONV_DISABLE_PLUGINS", "").split(",")):
            pm.set_blocked(name)
        load_entry_points(pm)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


WARNED: set[str] = set()  # broken plugins already reported by this process


def load_entry_points(pm: PluginManager) -> None:
    """Register each ``wconv`` entry point on its own, so that one broken plugin breaks nothing else."""
    for entry_point in entry_points(group="wconv"):
        name = entry_point.name
        if pm.get_plugin(name) is not None or pm.is_blocked(name):
            continue
        try:
            pm.load_setuptools_entrypoints("wconv", name)
            pm.check_pending()
        except Exception as e:
            if (plugin := pm.get_plugin(name)) is not None:
                pm.unregister(plugin)
            pm.set_blocked(name)
            pm.broken[name] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            if name not in WARNED:
                WARNED.add(name)
                print(f"Warning: plugin '{name}' failed to load: {pm.broken[name]}; disable with WCONV_DISABLE_PLUGINS={name}",
                      file=sys.stderr)


def family_names(pm: pluggy.PluginManager) -> list[str]:
    """Registered names of the plugins that implement ``wconv_load`` (the model families)."""
    return sorted(impl.plugin_name for impl in pm.hook.wconv_load.get_hookimpls())


def resolve_family(pm: pluggy.PluginManager, name: str) -> str:
    """The registered family for ``name`` or one of its aliases (a family's ``ALIASES``)."""
    for family in family_names(pm):
        if name == family or name in getattr(pm.get_plugin(family), "ALIASES", ()):
            return family
    raise InputError(f"unknown --family '{name}': choose one of {', '.join(family_names(pm))} (see `wconv families`)")


class FamilyHooks:
    """``pm.hook`` restricted to one family plus every plugin that is not a family."""

    def __init__(self, pm: pluggy.PluginManager, family: str):
        self._pm = pm
        self._others = [pm.get_plugin(name) for name in family_names(pm) if name != family]

    def __getattr__(self, hook_name: str):
        caller = self._pm.subset_hook_caller(hook_name, remove_plugins=self._others)
        setattr(self, hook_name, caller)
        return caller

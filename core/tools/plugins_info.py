"""What `wconv plugins` and `wconv families` show: plugin names, versions, hooks, families."""

from __future__ import annotations

import pluggy

from ..layouts import collect_layouts
from ..manager import CORE_PLUGINS, family_names
from ..manifest import package_version


def describe_plugins(pm: pluggy.PluginManager, include_core: bool = False) -> list[dict]:
    """One row per registered plugin: name, version, whether it is a family, hooks implemented."""
    distributions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    families = set(family_names(pm))
    rows = []
    for name, plugin in sorted(pm.list_name_plugin()):
        if plugin is None or (name in CORE_PLUGINS and not include_core):
            continue
        dist = distributions.get(id(plugin))
        rows.append({
            "name": name,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "version": dist.version if dist else package_version("wconv"),
            "family": name in families,
            "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()),
            "error": None,
        })
    for name, error in sorted(getattr(pm, "broken", {}).items()):
        rows.append({"name": name, "module": "", "version": None, "family": False, "hooks": [], "error": error})
    return rows


def describe_families(pm: pluggy.PluginManager) -> list[dict]:
    """One row per family: name, aliases, description and the model names it knows."""
    rows = []
    for name in family_names(pm):
        plugin = pm.get_plugin(name)
        rows.append({
            "name": name,
            "aliases": list(getattr(plugin, "ALIASES", ())),
            "description": getattr(plugin, "DESCRIPTION", ""),
            "known_models": list(getattr(plugin, "KNOWN_MODELS", ())),
        })
    return rows


def describe_layouts(pm: pluggy.PluginManager) -> list[dict]:
    """One row per registered layout: name, description and the plugin that registered it."""
    return [{"name": name, "description": layout.description, "module": type(layout).__module__}
            for name, layout in sorted(collect_layouts(pm).items())]

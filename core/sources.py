"""Source models outside a conversion: loading one (for `wconv verify`, `wconv transcribe`, a family's
parent) and recognising huggingface_hub snapshot folders."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .job import Job, LoadedModel
from .manager import FamilyHooks, get_plugin_manager, resolve_family
from .pipeline import call_stage


def hub_repo_id(directory: Path) -> str | None:
    """The hub id (``org/name``) of a snapshot in huggingface_hub's cache (``models--org--name/snapshots/<commit>``)."""
    resolved = Path(directory).resolve()
    cache_entry = resolved.parent.parent.name
    if resolved.parent.name == "snapshots" and cache_entry.startswith("models--"):
        return cache_entry[len("models--"):].replace("--", "/", 1)
    return None


def load_source(source: str, family: str | None = None, pm=None, expected_sha256: str | None = None) -> LoadedModel:
    """Run the load and patch stages for ``source``; check it is the checkpoint a manifest names."""
    pm = pm or get_plugin_manager()
    job = Job(source=source, family=family, output=Path("."))
    hooks = FamilyHooks(pm, resolve_family(pm, family)) if family else pm.hook
    model = call_stage("load", hooks.wconv_load, job=job)
    call_stage("patch", FamilyHooks(pm, model.family).wconv_patch, model=model, job=job)
    if expected_sha256 and model.source_sha256 != expected_sha256:
        raise InputError(f"{source} is not the checkpoint these artifacts were converted from (sha256 differs): pass --against with the original")
    return model

"""Load a source model outside a conversion (for `wconv verify` and `wconv transcribe`)."""

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


def load_source(source: str, family: str | None, pm=None, expected_sha256: str | None = None) -> LoadedModel:
    """Run the load and patch stages for ``source``; check it is the checkpoint a manifest names."""
    pm = pm or get_plugin_manager()
    job = Job(source=source, family=family, output=Path("."))
    hooks = FamilyHooks(pm, resolve_family(pm, family)) if family else pm.hook
    model = call_stage("load", hooks.wconv_load, job=job)
    call_stage("patch", FamilyHooks(pm, model.family).wconv_patch, model=model, job=job)
    if expected_sha256 and model.source_sha256 != expected_sha256:
        raise InputError(f"{source} is not the checkpoint these artifacts were converted from (sha256 differs): pass --against with the original")
    return model


def manifest_entry_for(path: Path) -> tuple[dict | None, dict | None]:
    """(manifest, artifact entry) of the wconv manifest beside ``path`` that lists it, if any."""
    from .manifest import read_manifest

    for candidate in sorted(path.parent.glob("*.manifest.json")):
        manifest = read_manifest(candidate)
        for entry in manifest["artifacts"]:
            if entry["file"] == path.name:
                return manifest, entry
    return None, None


def verify_saved(path: Path, against: str | None, family: str | None, verify_input: Path | None, min_psnr: float, pm=None):
    """Run the verify stage on an existing artifact; the reference is its manifest's source or ``against``."""
    from .job import Artifact
    from .manifest import describe_io
    from .pipeline import flatten_checks

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise InputError(f"{path} is not an .mlpackage: give the path of a converted artifact")
    manifest, entry = manifest_entry_for(path)
    if against is None and manifest is None:
        raise InputError(f"no wconv manifest beside {path} names it: pass --against <checkpoint> to say what to compare with")
    pm = pm or get_plugin_manager()
    family = family or (manifest["family"] if manifest else None)
    model = load_source(against or manifest["source"], family, pm,
                        expected_sha256=None if against else manifest["checkpoint_sha256"])
    if manifest is not None:
        model.name = manifest["name"]  # as converted (--name), which names the artifacts beside this one
    io = entry or {"kind": "encoder", **describe_io(path)}
    artifact = Artifact(kind=io["kind"], filename=path.name, inputs=io["inputs"], outputs=io["outputs"])
    job = Job(source=model.source, family=model.family, output=path.parent, verify_input=verify_input, min_psnr=min_psnr)
    results = call_stage("verify", FamilyHooks(pm, model.family).wconv_verify, path=path, model=model, artifact=artifact, job=job)
    return flatten_checks(results)

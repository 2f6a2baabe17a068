"""`wconv verify`: the verify stage run on an artifact saved earlier, against its manifest's source."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import InputError
from ..job import Artifact, ArtifactKind, Job
from ..manager import FamilyHooks, get_plugin_manager
from ..manifest import describe_io, read_manifest
from ..pipeline import call_stage, flatten_checks
from ..sources import load_source


def manifest_entry_for(path: Path) -> tuple[dict | None, dict | None]:
    """(manifest, artifact entry) of the wconv manifest beside ``path`` that lists it, if any."""
    for candidate in sorted(path.parent.glob("*.manifest.json")):
        manifest = read_manifest(candidate)
        for entry in manifest["artifacts"]:
            if entry["file"] == path.name:
                return manifest, entry
    return None, None


def verify_saved(path: Path, against: str | None, family: str | None, verify_input: Path | None, min_psnr: float, pm=None):
    """Run the verify stage on an existing artifact; the reference is its manifest's source or ``against``."""
    path = Path(path)
    if not ((path / "Manifest.json").is_file() or path.suffix == ".aimodel"):
        raise InputError(f"{path} is not an .mlpackage or .aimodel: give the path of a converted artifact")
    manifest, entry = manifest_entry_for(path)
    if against is None and manifest is None:
        raise InputError(f"no wconv manifest beside {path} names it: pass --against <checkpoint> to say what to compare with")
    pm = pm or get_plugin_manager()
    family = family or (manifest["family"] if manifest else None)
    model = load_source(against or manifest["source"], family, pm,
                        expected_sha256=None if against else manifest["checkpoint_sha256"])
    if manifest is not None:
        model.name = manifest["name"]  # as converted (--name), which names the artifacts beside this one
    check_same_dims(path, manifest["dims"] if manifest else package_dims(path), model, against)
    artifact = Artifact.from_entry(entry or {"kind": ArtifactKind.ENCODER, **describe_io(path)}, path.name)
    job = Job(source=model.source, family=model.family, output=path.parent, verify_input=verify_input, min_psnr=min_psnr)
    results = call_stage("verify", FamilyHooks(pm, model.family).wconv_verify, path=path, model=model, artifact=artifact, job=job)
    return flatten_checks(results)


def package_dims(path: Path) -> dict | None:
    """The dims of the model a package was converted from, as wconv's postprocess records them in its metadata."""
    import coremltools as ct

    recorded = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description.metadata.userDefined.get("wconv.dims")
    return json.loads(recorded) if recorded else None


def check_same_dims(path: Path, recorded: dict | None, model, against: str | None) -> None:
    """Refuse to compare an artifact with a model of other dimensions (another size of Whisper)."""
    dims = dataclasses.asdict(model.dims)
    differ = [f"{name} {recorded[name]} vs {value}" for name, value in dims.items() if recorded and recorded.get(name, value) != value]
    if differ:
        raise InputError(f"{against or model.source} is not the model {path.name} was converted from, nor one of its size "
                         f"({', '.join(differ[:3])}): pass --against a checkpoint of the same dimensions")

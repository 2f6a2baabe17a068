"""manifest.json: what was converted, from what, with which tools, and how well it verified."""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import InputError
from .job import Check, Job, LoadedModel, target_name


def manifest_filename(name: str) -> str:
    """The manifest of model ``name`` lives beside its artifacts as ``<name>.manifest.json``."""
    return f"{name}.manifest.json"


def package_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe_io(path: Path) -> dict:
    """Names, shapes and dtypes of a saved .mlpackage's inputs, outputs and states, read from its spec (or a Core AI
    .aimodel's, or a compiled .mlmodelc's ``metadata.json``)."""
    if Path(path).suffix == ".aimodel":
        from .runtime.coreai import describe_aimodel

        return describe_aimodel(path)
    if Path(path).suffix == ".mlmodelc":
        return describe_compiled(path)
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    dtype_names = {v: k.lower() for k, v in ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}

    def feature(f):
        kind = f.type.WhichOneof("Type")
        array = f.type.stateType.arrayType if kind == "stateType" else f.type.multiArrayType
        entry = {"name": f.name, "shape": list(array.shape), "dtype": dtype_names.get(array.dataType, "?")}
        enumerated = [list(s.shape) for s in array.enumeratedShapes.shapes]
        if enumerated:
            entry["enumerated_shapes"] = enumerated
        return entry

    return {
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "states": [feature(f) for f in spec.description.state],
        "specification_version": spec.specificationVersion,
    }


def describe_compiled(path: Path) -> dict:
    """:func:`describe_io` of a compiled ``.mlmodelc``, from the ``metadata.json`` Core ML's compiler writes beside
    the program: one object whose ``inputSchema``/``outputSchema``/``stateSchema`` entries are Core ML's feature
    descriptions as strings (``"dataType": "Float32"``, ``"shape": "[1, 80, 3000]"``, ``"enumeratedShapes"`` when
    ``"hasShapeFlexibility": "1"``)."""
    metadata_file = Path(path) / "metadata.json"

    def feature(entry: dict) -> dict:
        described = {"name": entry["name"], "shape": json.loads(entry["shape"]), "dtype": entry["dataType"].lower()}
        if entry.get("hasShapeFlexibility") == "1" and "enumeratedShapes" in entry:
            described["enumerated_shapes"] = json.loads(entry["enumeratedShapes"])
        return described

    try:
        (metadata,) = json.loads(metadata_file.read_bytes())
        return {
            "inputs": [feature(entry) for entry in metadata["inputSchema"]],
            "outputs": [feature(entry) for entry in metadata["outputSchema"]],
            "states": [feature(entry) for entry in metadata.get("stateSchema", [])],
            "specification_version": int(metadata["specificationVersion"]),
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"cannot read the inputs and outputs of {path} from its metadata.json ({type(e).__name__}: {e}): "
                         "compile the model again with xcrun coremlcompiler, or give its .mlpackage") from e


def build_manifest(model: LoadedModel, job: Job, artifacts: list[dict], checks: list[Check], reused: dict[str, dict],
                   compile_command: str | None = None) -> dict:
    """The manifest dict for one converted model; ``reused`` maps artifact files to their :class:`~wconv.Reuse` records;
    ``compile_command`` is what still has to run on a Mac before the consumer can load the models (``needs_compile``)."""
    return {
        "wconv_manifest": 1,
        "family": model.family,
        "model": job.source,
        "source": model.source,
        "name": model.name,
        "checkpoint_sha256": model.source_sha256,
        "dims": dataclasses.asdict(model.dims),
        "multilingual": model.multilingual,
        "options": job.describe_options(),
        "versions": {
            "wconv": package_version("wconv"),
            "torch": package_version("torch"),
            "coremltools": package_version("coremltools"),
            "python": platform.python_version(),
        },
        "artifacts": [with_target(entry, job.min_target) for entry in artifacts],
        "verify": [check.to_dict() for check in checks],
        "verify_input": verify_input_name(job.verify_input),
        "needs_compile": compile_command is not None,
        **({"compile_command": compile_command} if compile_command else {}),
        **({"reused": reused} if reused else {}),
        **model.provenance,
    }


def with_target(entry: dict, requested: str) -> dict:
    """A Core ML artifact's entry with the deployment target it has (``--decoder stateful`` needs iOS18, whatever was asked)."""
    if "specification_version" not in entry:
        return entry
    return {**entry, "min_target": target_name(entry["specification_version"], requested)}


def verify_input_name(path: Path | None) -> str | None:
    """How a manifest names what its checks ran on: the absolute path of ``--verify-input``, None for the bundled clip."""
    return str(Path(path).resolve()) if path else None


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def manifests_in(folder: Path) -> list[Path]:
    """The wconv manifests in ``folder`` and in its subfolders one level down (WhisperKit's model folders),
    not in hidden ones (wconv's own staging folders among them)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    nested = [path for path in folder.glob("*/*.manifest.json") if not path.parent.name.startswith(".")]
    return sorted([*folder.glob("*.manifest.json"), *nested])


def listed_files(path: Path) -> set[str]:
    """The files the manifest at ``path`` lists (artifacts and their recipes); none if there is no readable manifest."""
    try:
        entries = read_manifest(path)["artifacts"]
    except InputError:
        return set()
    recipes = {entry["compression"].get("recipe_file") for entry in entries if isinstance(entry.get("compression"), dict)}
    return {entry["file"] for entry in entries} | {name for name in recipes if isinstance(name, str)}


def read_manifest(path: Path) -> dict:
    """Load a manifest given its file or the directory holding exactly one."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.manifest.json"))
        if len(found) != 1:
            raise InputError(f"{path} holds {len(found)} wconv manifests: name the *.manifest.json file to use")
        path = found[0]
    if not path.is_file():
        raise InputError(f"no wconv manifest at {path}: give an output directory of `wconv run` or its *.manifest.json")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path} is not a wconv manifest (not valid JSON: {type(e).__name__}); convert the model again") from e
    if problem := manifest_problem(manifest):
        raise InputError(f"{path} is not a wconv manifest ({problem}); convert the model again")
    manifest["_path"] = str(path)
    return manifest


# What every wconv manifest holds, and the type of each value
MANIFEST_FIELDS = {"family": str, "source": str, "name": str, "checkpoint_sha256": str, "dims": dict, "options": dict,
                   "artifacts": list, "verify": list}


def manifest_problem(manifest) -> str | None:
    """What makes ``manifest`` (parsed JSON) not a wconv manifest, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if not all(isinstance(entry, dict) and isinstance(entry.get("file"), str) for entry in manifest["artifacts"]):
        return "an artifact entry has no 'file'"
    if not all(isinstance(check, dict) and isinstance(check.get("artifact"), str) for check in manifest["verify"]):
        return "a verify entry has no 'artifact'"
    return None

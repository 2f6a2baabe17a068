"""Which parent a distil model has, proof that their encoders are identical, and where the parent's
converted encoder is (or converting it once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import wconv
from wconv import Artifact, ArtifactKind, InputError, Job, LoadedModel, Reuse

from .proof import EncoderDiffers, check_same_encoder_shape, first_differing_encoder_tensor

KNOWN_PARENTS = {
    "distil-small.en": "small.en",
    "distil-medium.en": "medium.en",
    "distil-large-v2": "large-v2",
    "distil-large-v3": "large-v3",
    "distil-large-v3.5": "large-v3",
}
# Distilled with a retrained encoder in some releases: when the tensors differ, convert its own.
MAY_DIFFER = {"distil-large-v3.5"}


@dataclass
class DistilSource:
    name: str
    checkpoint: str
    parent: str
    ggml: bool = False  # the checkpoint is a whisper.cpp ggml file


def resolve_distil(job: Job) -> DistilSource | None:
    """The distil checkpoint and parent for ``job``; None if the source is not distil-whisper's."""
    from wconv.plugins.ggml_whisper import model_name as ggml_model_name
    from wconv.plugins.hf_whisper.checkpoint import artifact_name

    explicit = job.family is not None
    parent = job.parent
    ggml = wconv.is_ggml_file(job.source)
    key = ggml_model_name(Path(job.source)) if ggml else job.source.rstrip("/").split("/")[-1]
    if explicit and f"distil-{key}" in KNOWN_PARENTS:
        key = f"distil-{key}"
    if Path(job.source).exists():
        parent = parent or KNOWN_PARENTS.get(key)
        if parent is None:
            if explicit:
                raise InputError(f"which model is {job.source} distilled from? pass --parent <model name, .pt, ggml file, "
                                 "directory or converted encoder>")
            return None
        return DistilSource(key if ggml else artifact_name(Path(job.source).resolve().name), job.source, parent, ggml)
    if key in KNOWN_PARENTS and (explicit or job.source.startswith("distil-whisper/")):
        return DistilSource(key, f"distil-whisper/{key}", parent or KNOWN_PARENTS[key])
    if explicit:
        raise InputError(f"unknown distil-whisper model '{job.source}': use one of {', '.join(KNOWN_PARENTS)} or a local directory with --parent")
    return None


def load_parent(model: LoadedModel, parent_source: str, family: str | None = None, expected_sha256: str | None = None) -> LoadedModel:
    """The parent checkpoint, once its encoder is proven to be ``model``'s, tensor by tensor."""
    parent = wconv.load_source(parent_source, family, expected_sha256=expected_sha256)
    check_same_encoder_shape(model, parent)
    differing = first_differing_encoder_tensor(model, parent)
    if differing:
        raise EncoderDiffers(f"{model.name}'s encoder differs from {parent.name}'s at tensor {differing}: "
                             "pass --convert-own-encoder to convert its own encoder")
    return parent


def is_converted_encoder(source: str) -> bool:
    return Path(source).suffix in (".mlpackage", ".mlmodelc") and Path(source).is_dir()


def load_parent_package(model: LoadedModel, package: Path, job: Job) -> LoadedModel | None:
    """The checkpoint proving that the converted encoder ``package`` (or compiled ``.mlmodelc``) is ``model``'s:
    ``--parent-ggml``, else the source named by the wconv manifest beside it (checked by sha256); None under ``--trust-parent``.

    The package is recorded in ``model.provenance`` (``parent_package``, ``parent_proof``) for ``wconv_reuse``.
    """
    manifest, _ = manifest_listing(package)
    if job.parent_ggml:
        proof, parent = "parent-ggml", load_parent(model, job.parent_ggml)
    elif manifest is not None:
        if not Path(manifest["source"]).exists():
            raise InputError(f"the manifest beside {package} names its source {manifest['source']}, which is gone: pass "
                             "--parent-ggml <the parent's ggml file> or --trust-parent")
        proof, parent = "manifest", load_parent(model, manifest["source"], manifest["family"], manifest["checkpoint_sha256"])
    elif job.trust_parent:
        proof, parent = "trusted", None
    else:
        raise InputError(f"nothing proves that {package} holds {model.name}'s encoder: pass --parent-ggml <the parent's ggml "
                         "file>, keep the parent's wconv manifest beside the package, or pass --trust-parent")
    model.provenance.update(parent_package=str(package.resolve()), parent_proof=proof)
    return parent


def find_converted_encoder(parent: LoadedModel, wanted: Artifact, folders: list[Path], job: Job) -> tuple[Path, dict] | tuple[None, None]:
    """An encoder of ``parent`` (same checkpoint sha256, min target and IO as ``wanted``, verified) in one of ``folders``."""
    for folder in folders:
        for candidate in wconv.manifests_in(folder):
            manifest = wconv.read_manifest(candidate)
            if manifest.get("checkpoint_sha256") != parent.source_sha256:
                continue
            if manifest["options"].get("min_target") != job.min_target or not all(c["passed"] for c in manifest["verify"]):
                continue
            for entry in manifest["artifacts"]:
                package = candidate.parent / entry["file"]
                if entry["kind"] == ArtifactKind.ENCODER and Artifact.from_entry(entry).contract() == wanted.contract() and package.is_dir():
                    return package, manifest
    return None, None


def parent_cache_dir(parent: LoadedModel) -> Path:
    return wconv.cache_dir() / "encoders" / f"{parent.name}-{parent.source_sha256[:12]}"


def manifest_listing(package: Path) -> tuple[dict, dict] | tuple[None, None]:
    """(manifest, artifact entry) of the wconv manifest beside ``package`` that lists it, if any; for a compiled
    ``.mlmodelc``, the one listing the ``.mlpackage`` of its name (which wconv compiles beside it on a Mac)."""
    listed = package.with_suffix(".mlpackage").resolve()
    for candidate in wconv.manifests_in(package.parent):
        manifest = wconv.read_manifest(candidate)
        for entry in manifest["artifacts"]:
            if (candidate.parent / entry["file"]).resolve() == listed:
                return manifest, entry
    return None, None


def parent_encoder(model: LoadedModel, wanted: Artifact, job: Job) -> Reuse | None:
    """The parent's converted encoder with ``wanted``'s IO: the package given as ``--parent``, or one found in
    the output or the cache.

    If there is none, whisper.cpp's encoder is converted from the parent once, into the cache;
    WhisperKit's AudioEncoder is not (converting the parent's whole folder would cost more than
    converting the same tensors here), nor is an encoder with enumerated lengths: ``None`` then.
    """
    if package := model.provenance.get("parent_package"):
        return package_reuse(model, Path(package), wanted)
    parent = model.parent
    package, manifest = find_converted_encoder(parent, wanted, [job.output, parent_cache_dir(parent)], job)
    if package is None:
        if wanted.channels_first or any(spec.get("enumerated_frames") for spec in wanted.inputs):
            return None
        result = wconv.convert(parent.source, family=parent.family, output=parent_cache_dir(parent), layout="coreml",
                               min_target=job.min_target, min_psnr=job.min_psnr, force=True)
        package, manifest = result.paths[0], result.manifest
    return linked(package, parent.name, wanted, {**parent_details(model), "parent_verify": manifest["verify"]})


def package_reuse(model: LoadedModel, package: Path, wanted: Artifact) -> Reuse | None:
    """The ``--parent`` package (or compiled ``.mlmodelc``) in place of whisper.cpp's fixed-shape encoder; other
    artifacts are converted.

    A package whose manifest, or a compiled model whose ``metadata.json``, gives it other IO than ``wanted`` is refused.
    """
    if wanted.channels_first or any(spec.get("enumerated_frames") for spec in wanted.inputs):
        return None
    manifest, entry = manifest_listing(package)
    declared = [entry] if entry is not None else []
    if package.suffix == ".mlmodelc":
        declared.append({"kind": wanted.kind.value, "file": package.name, **wconv.describe_io(package)})
    if any(Artifact.from_entry(found).contract() != wanted.contract() for found in declared):
        raise InputError(f"{package} has other inputs or outputs than whisper.cpp's encoder ({wanted.filename}): give the "
                         f"parent's ggml-<model>-encoder{package.suffix}")
    if model.parent is None:
        name = package.stem.removeprefix("ggml-").removesuffix("-encoder")
        return linked(package, name, wanted, {"trusted": True})
    verify = {"parent_verify": manifest["verify"]} if manifest else {}
    return linked(package, model.parent.name, wanted, {**parent_details(model), **verify})


def linked(package: Path, parent: str, wanted: Artifact, details: dict) -> Reuse:
    """``package`` linked in place of ``wanted``; a compiled ``.mlmodelc`` under ``wanted``'s name with its own suffix,
    recorded as compiled and not verified here (nothing but Core ML on a Mac runs it; its proof is ``parent_proof``)."""
    if package.suffix == ".mlmodelc":
        details = {**details, "compiled": True, "verified": False}
    return Reuse(path=package, parent=parent, details=details, filename=Path(wanted.filename).with_suffix(package.suffix).name)


def parent_details(model: LoadedModel) -> dict:
    parent = model.parent
    return {
        "parent_source": parent.source,
        "parent_sha256": parent.source_sha256,
        "encoder_tensors_compared": sum(1 for name in model.state_dict if name.startswith("encoder.")),
    }

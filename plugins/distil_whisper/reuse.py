"""Which parent a distil model has, proof that their encoders are identical, and where the parent's
converted encoder is (or converting it once)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

import wconv
from wconv import Artifact, ArtifactKind, InputError, Job, LoadedModel, Reuse

KNOWN_PARENTS = {
    "distil-small.en": "small.en",
    "distil-medium.en": "medium.en",
    "distil-large-v2": "large-v2",
    "distil-large-v3": "large-v3",
    "distil-large-v3.5": "large-v3",
}
# Distilled with a retrained encoder in some releases: when the tensors differ, convert its own.
MAY_DIFFER = {"distil-large-v3.5"}
ENCODER_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")


class EncoderDiffers(InputError):
    """The distil encoder is not the parent's (the user may pass --convert-own-encoder)."""


@dataclass
class DistilSource:
    name: str
    checkpoint: str
    parent: str


def resolve_distil(job: Job) -> DistilSource | None:
    """The distil checkpoint and parent for ``job``; None if the source is not distil-whisper's."""
    from wconv.plugins.hf_whisper.checkpoint import artifact_name

    explicit = job.family is not None
    parent = job.parent
    key = job.source.rstrip("/").split("/")[-1]
    if explicit and f"distil-{key}" in KNOWN_PARENTS:
        key = f"distil-{key}"
    if Path(job.source).exists():
        parent = parent or KNOWN_PARENTS.get(key)
        if parent is None:
            if explicit:
                raise InputError(f"which model is {job.source} distilled from? pass --parent <model name, .pt or directory>")
            return None
        return DistilSource(artifact_name(Path(job.source).resolve().name), job.source, parent)
    if key in KNOWN_PARENTS and (explicit or job.source.startswith("distil-whisper/")):
        return DistilSource(key, f"distil-whisper/{key}", parent or KNOWN_PARENTS[key])
    if explicit:
        raise InputError(f"unknown distil-whisper model '{job.source}': use one of {', '.join(KNOWN_PARENTS)} or a local directory with --parent")
    return None


def tensor_digest(tensor) -> str:
    """sha256 of a tensor's values in fp16, the precision the Core ML encoder stores."""
    return hashlib.sha256(torch.as_tensor(tensor).to(torch.float16).contiguous().numpy().tobytes()).hexdigest()


def first_differing_encoder_tensor(distil: dict, parent: dict) -> str | None:
    """The first encoder tensor (by name) whose fp16 values differ, or that only one side has."""
    names = sorted({k for k in (*distil, *parent) if k.startswith("encoder.")})
    for name in names:
        if name not in distil or name not in parent or tensor_digest(distil[name]) != tensor_digest(parent[name]):
            return name
    return None


def check_same_encoder_shape(model: LoadedModel, parent: LoadedModel) -> None:
    for field in ENCODER_DIMS:
        ours, theirs = getattr(model.dims, field), getattr(parent.dims, field)
        if ours != theirs:
            raise InputError(f"{model.name} has {field}={ours} but its parent {parent.name} has {theirs}: "
                             "they cannot share an encoder; pass the right --parent")


def load_parent(model: LoadedModel, parent_source: str) -> LoadedModel:
    """The parent checkpoint, once its encoder is proven to be ``model``'s, tensor by tensor."""
    parent = wconv.load_source(parent_source)
    check_same_encoder_shape(model, parent)
    differing = first_differing_encoder_tensor(model.state_dict, parent.state_dict)
    if differing:
        raise EncoderDiffers(f"{model.name}'s encoder differs from {parent.name}'s at tensor {differing}: "
                             "pass --convert-own-encoder to convert its own encoder")
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


def parent_encoder(model: LoadedModel, wanted: Artifact, job: Job) -> Reuse | None:
    """The parent's converted encoder with ``wanted``'s IO, from the output or the cache.

    If there is none, whisper.cpp's encoder is converted from the parent once, into the cache;
    WhisperKit's AudioEncoder is not (converting the parent's whole folder would cost more than
    converting the same tensors here), nor is an encoder with enumerated lengths: ``None`` then.
    """
    parent = model.parent
    package, manifest = find_converted_encoder(parent, wanted, [job.output, parent_cache_dir(parent)], job)
    if package is None:
        if wanted.channels_first or any(spec.get("enumerated_frames") for spec in wanted.inputs):
            return None
        result = wconv.convert(parent.source, family=parent.family, output=parent_cache_dir(parent), layout="coreml",
                               min_target=job.min_target, min_psnr=job.min_psnr, force=True)
        package, manifest = result.paths[0], result.manifest
    return Reuse(path=package, parent=parent.name, details={
        "parent_source": parent.source,
        "parent_sha256": parent.source_sha256,
        "encoder_tensors_compared": sum(1 for name in model.state_dict if name.startswith("encoder.")),
        "parent_verify": manifest["verify"],
    })

"""Which parent a distil model has, proof that their encoders are identical, and where the parent's
converted encoder is (or converting it once)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from wconv.artifacts import WHISPERKIT, io_specs, plan_artifacts
from wconv.errors import InputError
from wconv.job import Artifact, Job, LoadedModel

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
    parent = job.options.get("parent")
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


def io_contract(io) -> list[tuple]:
    """Names, shapes and dtypes of an Artifact's or manifest entry's IO; enumerated shapes make it differ."""
    inputs, outputs = io_specs(io)
    return [(spec["name"], list(spec["shape"]), spec["dtype"], bool(spec.get("enumerated_shapes") or spec.get("enumerated_frames")))
            for spec in (*inputs, *outputs)]


def find_converted_encoder(parent: LoadedModel, wanted: Artifact, folders: list[Path], job: Job) -> tuple[Path, dict] | tuple[None, None]:
    """An encoder of ``parent`` (same checkpoint sha256, min target and IO as ``wanted``, verified) in one of ``folders``."""
    from wconv.manifest import manifests_in, read_manifest

    for folder in folders:
        for candidate in manifests_in(folder):
            manifest = read_manifest(candidate)
            if manifest.get("checkpoint_sha256") != parent.source_sha256:
                continue
            if manifest["options"].get("min_target") != job.min_target or not all(c["passed"] for c in manifest["verify"]):
                continue
            for entry in manifest["artifacts"]:
                package = candidate.parent / entry["file"]
                if entry["kind"] == "encoder" and io_contract(entry) == io_contract(wanted) and package.is_dir():
                    return package, manifest
    return None, None


def parent_cache_dir(parent: LoadedModel) -> Path:
    from wconv.sample import cache_dir

    return cache_dir() / "encoders" / f"{parent.name}-{parent.source_sha256[:12]}"


def parent_encoder_reuse(model: LoadedModel, parent_source: str, job: Job) -> dict:
    """Prove the encoders equal and return ``{artifact filename: reuse record}`` for the pipeline.

    The parent's encoder with the IO the job's layout needs is looked for in the output and the
    cache; if there is none, the whisper.cpp layout converts the parent's once into the cache, and
    WhisperKit's layout converts the distil's own (the same tensors: converting the parent's whole
    folder would cost more), so the result is ``{}``.
    """
    from wconv.pipeline import run
    from wconv.sources import load_source

    parent = load_source(parent_source, None)
    check_same_encoder_shape(model, parent)
    differing = first_differing_encoder_tensor(model.state_dict, parent.state_dict)
    if differing:
        raise EncoderDiffers(f"{model.name}'s encoder differs from {parent.name}'s at tensor {differing}: "
                         "pass --convert-own-encoder to convert its own encoder")
    compared = sum(1 for name in model.state_dict if name.startswith("encoder."))
    wanted = next(artifact for artifact in plan_artifacts(model, job) if artifact.kind == "encoder")
    folders = [job.output, parent_cache_dir(parent)]
    package, manifest = find_converted_encoder(parent, wanted, folders, job)
    if package is None and job.options.get("layout") == WHISPERKIT:
        return {}
    if package is None:
        parent_job = Job(source=parent.source, family=parent.family, output=parent_cache_dir(parent), min_target=job.min_target,
                         verify=True, min_psnr=job.min_psnr, force=True, options={"target": "coreml"})
        result = run(parent_job)
        package, manifest = result.paths[0], result.manifest
    return {
        wanted.filename: {
            "path": str(package),
            "parent": parent.name,
            "parent_source": parent.source,
            "parent_sha256": parent.source_sha256,
            "encoder_tensors_compared": compared,
            "parent_verify": manifest["verify"],
        }
    }

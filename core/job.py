"""The objects passed between pipeline stages: what to convert (:class:`Job`), the loaded source
(:class:`LoadedModel`), one artifact to produce (:class:`Artifact`, of an :class:`ArtifactKind`),
a converted artifact a family re-uses (:class:`Reuse`) and one verification result (:class:`Check`)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Fields of a Job that only say where and how to run, not what the artifacts are (left out of the manifest's options).
RUN_SETTINGS = ("source", "family", "output", "name", "force", "verify", "verify_input")
MIN_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")


@dataclass(frozen=True)
class Job:
    """One conversion request, as given on the command line or to :func:`wconv.convert`.

    The defaults here are wconv's defaults everywhere (CLI, Python API, batch files).
    """

    source: str
    family: str | None = None
    output: Path = Path("models")
    name: str | None = None
    force: bool = False
    min_target: str = "iOS16"
    layout: str = "whispercpp"
    audio_lengths: tuple[int, ...] = ()
    decoder: str | None = None
    text_context: int = 448  # self-attention cache length of the Core ML decoders (WhisperKit decodes at most 224)
    ggml_type: str = "f16"
    compress: str | None = None
    precision: str | None = None  # the layout's default (float16)
    folder_suffix: str | None = None
    parent: str | None = None
    parent_ggml: str | None = None
    trust_parent: bool = False
    convert_own_encoder: bool = False
    verify: bool = True
    min_psnr: float = 35.0
    verify_input: Path | None = None

    def replace(self, **changes) -> "Job":
        """A copy of this job with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe_options(self) -> dict[str, Any]:
        """The options that shape the artifacts, for the manifest (options left unset are omitted)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUN_SETTINGS}
        options["audio_lengths"] = list(self.audio_lengths)
        return {name: value for name, value in options.items() if value is not None and value is not False}


JOB_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Job) if f.default is not dataclasses.MISSING}


def target_rank(name: str) -> int:
    """The Core ML specification version of a deployment target (``iOS16`` and ``macOS13`` are both 7): targets compare by it."""
    import coremltools as ct

    return getattr(ct.target, name).value


def target_name(specification_version: int, like: str) -> str:
    """The deployment target of a Core ML specification version, named on the platform of ``like`` (9, "macOS13" -> "macOS15")."""
    import coremltools as ct

    platform = like.rstrip("0123456789_")
    names = [name for name, target in ct.target.__members__.items()
             if target.value == specification_version and name.rstrip("0123456789_") == platform]
    return names[-1] if names else f"specification version {specification_version}"


class ArtifactKind(str, enum.Enum):
    """What a Core ML artifact computes; the value is how manifests name it."""

    MEL_SPECTROGRAM = "melspectrogram"
    ENCODER = "encoder"
    DECODER_STATEFUL = "decoder-stateful"
    DECODER_CACHE_IO = "decoder-cache-io"

    @property
    def variant(self) -> str | None:
        """A decoder's ``--decoder`` variant (``stateful``, ``cache-io``); None for other kinds."""
        return DECODER_VARIANTS.get(self)

    @classmethod
    def decoder(cls, variant: str) -> "ArtifactKind":
        """The decoder kind of a ``--decoder`` variant."""
        return {name: kind for kind, name in DECODER_VARIANTS.items()}[variant]

    def __str__(self) -> str:
        return self.value


DECODER_VARIANTS = {ArtifactKind.DECODER_STATEFUL: "stateful", ArtifactKind.DECODER_CACHE_IO: "cache-io"}


@dataclass
class Artifact:
    """One Core ML model the pipeline produces: its kind, final file name and IO contract."""

    kind: ArtifactKind
    filename: str
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind in ArtifactKind._value2member_map_:  # "encoder" as a plain string works as the kind it names
            self.kind = ArtifactKind(self.kind)

    @classmethod
    def from_entry(cls, entry: dict, filename: str | None = None) -> "Artifact":
        """The artifact a manifest entry (or :func:`wconv.manifest.describe_io` plus a kind) describes."""
        return cls(kind=ArtifactKind(entry["kind"]), filename=filename or entry["file"],
                   inputs=entry["inputs"], outputs=entry["outputs"], options={"states": entry["states"]} if entry.get("states") else {})

    def contract(self) -> list[tuple]:
        """Names, shapes and dtypes of the IO; enumerated shapes make two contracts differ."""
        return [(spec["name"], list(spec["shape"]), spec["dtype"], bool(spec.get("enumerated_shapes") or spec.get("enumerated_frames")))
                for spec in (*self.inputs, *self.outputs)]

    @property
    def channels_first(self) -> bool:
        """Is the first output rank 4, ``(1, C, 1, S)`` (WhisperKit's layout), rather than whisper.cpp's ``(1, S, C)``?"""
        return len(self.outputs[0]["shape"]) == 4


@dataclass
class Reuse:
    """An artifact converted earlier that a family links instead of converting it (``wconv_reuse``).

    ``path`` is the existing ``.mlpackage``; ``parent`` names the model it was converted from;
    ``details`` (JSON-serialisable) go into the manifest with them. ``filename`` is the name it takes in the
    output when not the planned artifact's (a compiled ``.mlmodelc`` in place of the ``.mlpackage``): the layout
    then has nothing to compile for it.
    """

    path: Path
    parent: str
    details: dict[str, Any] = field(default_factory=dict)
    filename: str | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "parent": self.parent, **self.details}


@dataclass
class LoadedModel:
    """A source checkpoint, loaded and named the canonical (openai-whisper) way.

    ``state_dict`` uses openai-whisper's tensor names (``encoder.blocks.0.attn.query.weight``…);
    every family maps its own names onto these, and the shared ANE modules load from them.
    ``reference_encoder`` is the source model's own encoder in fp32 (mel -> (1, 1500, n_state)),
    used as the verification reference. ``repo_id`` is the hub id the model is published under
    (``org/name``) when known; WhisperKit's folder is named after it. ``tokenizer_json`` is the
    source's HF tokenizer file, if it has one (ggml vocabulary, WhisperKit's folder); ``vocab`` the BPE
    tokens as bytes in id order when the source has its own list (a ggml file) — the ggml file written takes
    it first. ``parent``
    is a model this one shares weights with (distil-whisper's teacher), for ``wconv_reuse``.
    ``provenance`` holds facts the family wants in the manifest (JSON-serialisable).
    """

    family: str
    name: str
    dims: Any
    state_dict: dict
    source: str
    source_sha256: str
    reference_encoder: Callable | None = None
    multilingual: bool = True
    alignment_heads: list | None = None
    repo_id: str | None = None
    tokenizer_json: Path | None = None
    vocab: list[bytes] | None = None
    parent: "LoadedModel | None" = None
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Check:
    """The outcome of one verification: metrics compare an artifact with its reference."""

    artifact: str
    passed: bool
    metrics: dict[str, float]
    method: str
    message: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

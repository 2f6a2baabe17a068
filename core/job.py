"""The objects passed between pipeline stages: what to convert (:class:`Job`), the loaded source
(:class:`LoadedModel`), one artifact to produce (:class:`Artifact`) and one verification result
(:class:`Check`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_MIN_TARGET = "iOS16"
# Options beyond Job's own fields, kept in ``Job.options`` (set by `wconv run` flags of the same name).
EXTRA_OPTIONS = ("decoder", "target", "ggml_type", "layout", "folder_suffix", "parent", "convert_own_encoder")
EXTRA_DEFAULTS = {"target": "whispercpp", "layout": "whispercpp", "ggml_type": "f16"}
DEFAULT_MIN_PSNR = 35.0


@dataclass(frozen=True)
class Job:
    """One conversion request, as given on the command line or to :func:`wconv.convert`."""

    source: str
    family: str | None = None
    output: Path = Path("models")
    name: str | None = None
    force: bool = False
    min_target: str = DEFAULT_MIN_TARGET
    audio_lengths: tuple[int, ...] = ()
    verify: bool = True
    min_psnr: float = DEFAULT_MIN_PSNR
    verify_input: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes) -> "Job":
        """A copy of this job with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe_options(self) -> dict[str, Any]:
        """The options that shape the artifacts, for the manifest."""
        return {
            "min_target": self.min_target,
            "audio_lengths": list(self.audio_lengths),
            "min_psnr": self.min_psnr,
            **self.options,
        }


@dataclass
class LoadedModel:
    """A source checkpoint, loaded and named the canonical (openai-whisper) way.

    ``state_dict`` uses openai-whisper's tensor names (``encoder.blocks.0.attn.query.weight``…);
    every family maps its own names onto these, and the shared ANE modules load from them.
    ``reference_encoder`` is the source model's own encoder in fp32 (mel -> (1, 1500, n_state)),
    used as the verification reference. ``repo_id`` is the hub id the model is published under
    (``org/name``) when known; WhisperKit's folder is named after it.
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
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifact:
    """One Core ML model the pipeline produces: its kind, final file name and IO contract."""

    kind: str
    filename: str
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


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

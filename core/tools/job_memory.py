"""How much memory one batch job needs: the model's dims, read without loading its weights, and the peak
resident memory of a ``wconv run`` of that size (the Ray executor's ``memory`` request; `--dry-run` prints it).

The estimate is ``PEAK_BASE_BYTES + bytes per parameter × parameters``, fitted to whole ``wconv run`` processes
with verification (benchmarks/batch_memory.py): one slope for jobs that convert the encoder alone, a steeper one for
jobs that also convert and verify a Core ML decoder (``decoder``, ``layout = "whisperkit"``) or Core AI assets
(``layout = "coreai"``, verified through fp32 twins; not measured, given the steeper slope).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..job import Job

GIB = 2**30
# Peak RSS of whole `wconv run` processes (random fp16 checkpoints, verification on), benchmarks/batch_memory.py
# (README's table): whispercpp tiny 0.77, small 1.13, large-v3 3.60 GiB; whisperkit tiny 0.86, small 1.72, large-v3 7.12 GiB.
PEAK_BASE_BYTES = int(0.70 * GIB)
BYTES_PER_PARAMETER_ENCODER_ONLY = 2.05
BYTES_PER_PARAMETER_WITH_DECODER = 4.55
SIZES = ("tiny", "base", "small", "medium", "large")  # the word in a model's name that gives its dims
UNKNOWN_SIZE = "large-v3"  # dims that cannot be read: assume the largest, so Ray never packs too much


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's peak memory in bytes, and where its dims came from (``config.json``, the checkpoint, its name…)."""

    bytes: int
    parameters: int
    dims_from: str

    @property
    def gib(self) -> float:
        return round(self.bytes / GIB, 2)


def parameter_count(dims) -> int:
    """Parameters of a Whisper model with these ``ModelDimensions`` (biases and norms included)."""
    audio, text = dims.n_audio_state, dims.n_text_state
    encoder = (dims.n_mels * audio * 3 + audio * audio * 3 + 2 * audio + dims.n_audio_ctx * audio  # convolutions, positions
               + dims.n_audio_layer * (12 * audio * audio + 12 * audio) + 2 * audio)  # blocks, final norm
    decoder = (dims.n_vocab * text + dims.n_text_ctx * text
               + dims.n_text_layer * (16 * text * text + 17 * text) + 2 * text)
    return encoder + decoder


def estimate_memory(job: Job, folder: Path = Path()) -> MemoryEstimate:
    """The peak memory of converting ``job``, from its model's dims (a relative path is one in ``folder``)."""
    dims, dims_from = job_dims(job, folder)
    parameters = parameter_count(dims)
    per_parameter = BYTES_PER_PARAMETER_WITH_DECODER if converts_more_than_the_encoder(job) else BYTES_PER_PARAMETER_ENCODER_ONLY
    return MemoryEstimate(int(PEAK_BASE_BYTES + per_parameter * parameters), parameters, dims_from)


def converts_more_than_the_encoder(job: Job) -> bool:
    """Whether a job also converts and verifies a decoder (or Core AI assets, verified through fp32 twins)."""
    return job.decoder is not None or job.layout in ("whisperkit", "coreai")


def job_dims(job: Job, folder: Path):
    """``(ModelDimensions, where from)``: an openai ``.pt``'s own dims, a Transformers ``config.json``,
    else the size its name says (``small``, ``faster-whisper-base``…), else large-v3's."""
    source = folder / job.source
    if source.is_file() and source.suffix == ".pt":
        if dims := checkpoint_dims(source):
            return dims, "checkpoint"
    if (source / "config.json").is_file():
        if dims := transformers_dims(source / "config.json"):
            return dims, "config.json"
    size = named_size(f"{job.name or ''} {source.name}")
    if size:
        return size_dims(size), f"name ({size})"
    return size_dims(UNKNOWN_SIZE), f"unknown: assumed {UNKNOWN_SIZE}"


def checkpoint_dims(path: Path):
    """The ``dims`` of an openai-format checkpoint, memory-mapped (weights stay on disk); None if unreadable."""
    import torch
    from whisper.model import ModelDimensions

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return ModelDimensions(**checkpoint["dims"])
    except Exception:  # not ours to judge here: the job's own load reports a bad checkpoint
        return None


def transformers_dims(path: Path):
    """``ModelDimensions`` from a Transformers ``WhisperConfig`` file; None if it is not one."""
    from whisper.model import ModelDimensions

    try:
        config = json.loads(path.read_text())
        return ModelDimensions(
            n_mels=config["num_mel_bins"], n_audio_ctx=config.get("max_source_positions", 1500), n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"], n_audio_layer=config["encoder_layers"], n_vocab=config["vocab_size"],
            n_text_ctx=config.get("max_target_positions", 448), n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def named_size(name: str) -> str | None:
    """The official size a model's name mentions (``large`` and ``turbo`` count as large-v3)."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & {"large", "turbo"}:
        return "large-v3"
    return next((size for size in SIZES if size in words), None)


def size_dims(size: str):
    from .random_checkpoints import real_dims

    return real_dims(size)

"""whisper.cpp family: a ggml whisper model file (``ggml-<model>[-qX_Y].bin``, f16, f32 or quantized),
recognised by its magic, not its extension.

Tensors are read with wconv's ggml reader (quantized ones dequantized to float32, f16/f32 ones mapped
from the file as stored) and already carry openai-whisper's names; the vocabulary is the file's own,
so ``.en`` and extended vocabularies go into the ggml file written back unchanged. Artifact name: the
file name without ``ggml-``, ``.bin`` and a quantization suffix (``ggml-small.en-q5_0.bin`` -> ``small.en``).
"""

from __future__ import annotations

import re
from pathlib import Path

import wconv

ALIASES = ("whisper.cpp", "whispercpp")
KNOWN_MODELS = ("ggml-<model>[-q8_0|q5_0|q5_1|q4_0|q4_1].bin",)
DESCRIPTION = "whisper.cpp ggml model files (f16, f32, q8_0, q5_0, q5_1, q4_0, q4_1)"


def model_name(path: Path) -> str:
    """``ggml-small.en-q5_0.bin`` -> ``small.en``: no ``ggml-`` prefix, extension or type suffix; lowercase."""
    name = path.name.lower()
    name = re.sub(r"\.bin$", "", name)
    name = re.sub(r"^ggml-", "", name)
    name = re.sub(r"-(q[458]_[01]|f16|f32)$", "", name)
    return re.sub(r"[^a-z0-9._-]", "-", name) or "model"


def ggml_path(source: str, explicit: bool) -> Path | None:
    """``source`` as a ggml file, or None when it is not one (an error when the family was chosen)."""
    path = Path(source)
    if wconv.is_ggml_file(path):
        return path
    if explicit:
        if not path.is_file():
            raise wconv.InputError(f"{source} is not a file: give a whisper.cpp ggml model file (ggml-<model>.bin)")
        raise wconv.InputError(f"{source} is not a ggml whisper file (bad magic): give a whisper.cpp ggml-<model>.bin")
    return None


def official_alignment_heads(name: str, dims) -> list[list[int]] | None:
    """openai-whisper's alignment heads when the file is named after an official model of the same shape."""
    from wconv.plugins.openai_whisper.checkpoint import OFFICIAL_MODELS, official_alignment_heads as heads_of

    if name not in OFFICIAL_MODELS:
        return None
    try:
        return heads_of(name, dims)
    except ValueError:  # a fine-tune named like an official model, with other dimensions
        return None


@wconv.hookimpl
def wconv_load(job):
    path = ggml_path(job.source, explicit=job.family is not None)
    if path is None:
        return None
    ggml = wconv.read_ggml(path)
    state_dict = ggml.state_dict()
    name = model_name(path)
    return wconv.LoadedModel(
        family="ggml",
        name=name,
        dims=ggml.dims,
        state_dict=state_dict,
        source=str(path.resolve()),
        source_sha256=wconv.sha256_file(path),
        reference_encoder=wconv.LazyEncoder(ggml.dims, state_dict),
        multilingual=ggml.dims.n_vocab >= 51865,
        alignment_heads=official_alignment_heads(name, ggml.dims),
        vocab=ggml.vocab,
        provenance={"source_ggml_type": ggml.ggml_type},
    )


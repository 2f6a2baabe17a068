"""`wconv transcribe`: speech to text through the converted artifacts of one output directory.

The log-mel is the converted MelSpectrogram's when the directory has one (``--layout whisperkit``),
else openai-whisper's ``log_mel_spectrogram`` on the host; the encoder is the converted Core ML
artifact (Core ML on macOS, the reference evaluator elsewhere), and the decoder is a converted Core
ML decoder when the directory has one (stateful preferred, then cache-io), else openai-whisper's
PyTorch decoder built from the same source checkpoint (checked by sha256), or from the whisper.cpp
output's own ggml file when the checkpoint is no longer at its path. Greedy decoding, no
timestamps; with a Core ML decoder the language defaults to English (no language detection).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..job import Artifact, ArtifactKind
from ..manifest import read_manifest
from ..runtime.audio import read_wav
from ..runtime.run import encode_samples


def listed_artifact(manifest: dict, wanted) -> tuple[Path, Artifact] | None:
    """(path beside the manifest, artifact) of the first artifact entry for which ``wanted(entry)`` holds."""
    folder = Path(manifest["_path"]).parent
    for entry in manifest["artifacts"]:
        if entry["kind"] in ArtifactKind._value2member_map_ and wanted(entry):
            path = folder / entry["file"]
            if not path.exists():
                raise InputError(f"{path} is listed in {manifest['_path']} but missing: convert again with `wconv run`")
            return path, Artifact.from_entry(entry)
    return None


def encoder_artifact(manifest: dict) -> tuple[Path, Artifact]:
    """The fixed-shape encoder listed in a manifest: its path and artifact."""
    found = listed_artifact(manifest, lambda a: a["kind"] == ArtifactKind.ENCODER and "enumerated_shapes" not in a["inputs"][0])
    if found is None:
        raise InputError(f"{manifest['_path']} lists no encoder artifact")
    return found


def encode(manifest: dict, audio: Path) -> tuple[np.ndarray, str]:
    """Encoder output (1, 1500, n_state) float32 of a wav, and how it was computed."""
    mel_model = listed_artifact(manifest, lambda a: a["kind"] == ArtifactKind.MEL_SPECTROGRAM)
    return encode_samples(read_wav(Path(audio)), *encoder_artifact(manifest), mel_model and mel_model[0], manifest["dims"]["n_mels"])


def source_model(manifest: dict, pm=None):
    """The source checkpoint (checked by sha256); once it is gone from its path, a whisper.cpp output's own
    ggml file, which holds the decoder too (read by the ``ggml`` family)."""
    from ..sources import load_source

    ggml = next((entry for entry in manifest["artifacts"] if entry["kind"] == "ggml"), None)
    if ggml is not None and not Path(manifest["source"]).exists():
        return load_source(str(Path(manifest["_path"]).parent / ggml["file"]), "ggml", pm)
    return load_source(manifest["source"], manifest["family"], pm, expected_sha256=manifest["checkpoint_sha256"])


def decode_with_pytorch(manifest: dict, features: np.ndarray, language: str | None, pm=None) -> list[int]:
    """Greedy tokens from openai-whisper's decoder on the same source checkpoint (or the ggml file beside the encoder)."""
    from ..runtime.reference import reference_tokens, whisper_model

    source = source_model(manifest, pm)
    model = whisper_model(source.dims, source.state_dict, source.alignment_heads)
    if language is None and not source.multilingual:
        language = "en"
    return reference_tokens(model, features, language)


def decoder_artifact(manifest: dict) -> tuple[Path, Artifact] | None:
    """(path, artifact) of a converted Core ML decoder listed in the manifest, preferring stateful."""
    for kind in (ArtifactKind.DECODER_STATEFUL, ArtifactKind.DECODER_CACHE_IO):
        if found := listed_artifact(manifest, lambda a: a["kind"] == kind):
            return found
    return None


def transcribe(target: Path, audio: Path, language: str | None = None, pm=None) -> dict:
    """Transcribe ``audio`` with the artifacts named by ``target`` (an output dir or a manifest)."""
    from whisper.model import ModelDimensions

    from ..runtime.decoding import get_tokenizer, transcribe_tokens

    if not Path(audio).is_file():
        raise InputError(f"audio file {audio} does not exist: give a 16 kHz (or any rate) .wav file")
    manifest = read_manifest(Path(target))
    dims, multilingual = ModelDimensions(**manifest["dims"]), manifest["multilingual"]
    features, encoder_method = encode(manifest, Path(audio))
    decoder = decoder_artifact(manifest)
    if decoder:
        path, artifact = decoder
        tokens = transcribe_tokens(features, path, artifact.kind, dims, multilingual, language or "en")
        decoder_method = f"{artifact.kind.variant} {encoder_method}"
    else:
        tokens, decoder_method = decode_with_pytorch(manifest, features, language, pm), "pytorch"
    tokenizer = get_tokenizer(dims, multilingual)
    text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()
    return {"text": text, "tokens": tokens, "encoder": encoder_method, "decoder": decoder_method}

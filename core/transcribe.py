"""`wconv transcribe`: speech to text through the converted artifacts of one output directory.

The log-mel is the converted MelSpectrogram's when the directory has one (``--layout whisperkit``),
else openai-whisper's ``log_mel_spectrogram`` on the host; the encoder is the converted Core ML
artifact (Core ML on macOS, the reference evaluator elsewhere), and the decoder is a converted Core
ML decoder when the directory has one (stateful preferred, then cache-io), else openai-whisper's
PyTorch decoder built from the same source checkpoint (checked by sha256). Greedy decoding, no
timestamps; with a Core ML decoder the language defaults to English (no language detection).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .manifest import read_manifest
from .verify import encoder_features, encoder_inputs, host_log_mel, read_wav, run_artifact


def listed_artifact(manifest: dict, wanted) -> tuple[Path, dict] | None:
    """(path beside the manifest, entry) of the first artifact for which ``wanted(entry)`` holds."""
    folder = Path(manifest["_path"]).parent
    for entry in manifest["artifacts"]:
        if wanted(entry):
            path = folder / entry["file"]
            if not path.exists():
                raise InputError(f"{path} is listed in {manifest['_path']} but missing: convert again with `wconv run`")
            return path, entry
    return None


def encoder_artifact(manifest: dict) -> tuple[Path, dict]:
    """The fixed-shape encoder listed in a manifest: its path and manifest entry."""
    found = listed_artifact(manifest, lambda a: a["kind"] == "encoder" and "enumerated_shapes" not in a["inputs"][0])
    if found is None:
        raise InputError(f"{manifest['_path']} lists no encoder artifact")
    return found


def encode_samples(samples: np.ndarray, encoder: tuple[Path, dict], mel_model: Path | None, n_mels: int,
                   method: str | None = None) -> tuple[np.ndarray, str]:
    """The converted encoder's output for 16 kHz ``samples`` (first 30 s) as ``(1, n_audio_ctx, D)`` float32, and the method.

    ``encoder`` is (path, IO entry); ``mel_model`` a converted MelSpectrogram, else the log-mel is computed on the host.
    """
    if mel_model is not None:
        import whisper

        mel = run_artifact(mel_model, {"audio": whisper.pad_or_trim(samples)}, method)[0]["melspectrogram_features"]
    else:
        mel = host_log_mel(samples, n_mels)
    outputs, method = run_artifact(encoder[0], encoder_inputs(encoder[1], mel), method)
    return encoder_features(encoder[1], outputs), method


def encode(manifest: dict, audio: Path) -> tuple[np.ndarray, str]:
    """Encoder output (1, 1500, n_state) float32 of a wav, and how it was computed."""
    mel_model = listed_artifact(manifest, lambda a: a["kind"] == "melspectrogram")
    return encode_samples(read_wav(Path(audio)), encoder_artifact(manifest), mel_model and mel_model[0], manifest["dims"]["n_mels"])


def decode_with_pytorch(manifest: dict, features: np.ndarray, language: str | None, pm=None) -> list[int]:
    """Greedy tokens from openai-whisper's decoder on the same source checkpoint."""
    from .reference import whisper_model
    from .sources import load_source

    source = load_source(manifest["source"], manifest["family"], pm, expected_sha256=manifest["checkpoint_sha256"])
    model = whisper_model(source.dims, source.state_dict, source.alignment_heads)
    if language is None and not source.multilingual:
        language = "en"
    return reference_tokens(model, features, language)


def reference_tokens(model, features: np.ndarray, language: str | None) -> list[int]:
    """openai-whisper's greedy tokens (fp32, no timestamps) for an encoder output ``(1, n_audio_ctx, D)``."""
    import torch
    import whisper

    options = whisper.DecodingOptions(language=language, without_timestamps=True, fp16=False, temperature=0.0)
    result = whisper.decode(model, torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), options)
    return list(result[0].tokens if isinstance(result, list) else result.tokens)


def decoder_artifact(manifest: dict) -> tuple[Path, str] | None:
    """(path, variant) of a converted Core ML decoder listed in the manifest, preferring stateful."""
    folder = Path(manifest["_path"]).parent
    found = {a["kind"].removeprefix("decoder-"): folder / a["file"] for a in manifest["artifacts"] if a["kind"].startswith("decoder-")}
    for variant in ("stateful", "cache-io"):
        if variant in found:
            return found[variant], variant
    return None


def transcribe(target: Path, audio: Path, language: str | None = None, pm=None) -> dict:
    """Transcribe ``audio`` with the artifacts named by ``target`` (an output dir or a manifest)."""
    from whisper.model import ModelDimensions

    from .decoding import get_tokenizer, transcribe_tokens

    if not Path(audio).is_file():
        raise InputError(f"audio file {audio} does not exist: give a 16 kHz (or any rate) .wav file")
    manifest = read_manifest(Path(target))
    dims, multilingual = ModelDimensions(**manifest["dims"]), manifest["multilingual"]
    features, encoder_method = encode(manifest, Path(audio))
    decoder = decoder_artifact(manifest)
    if decoder:
        tokens = transcribe_tokens(features, decoder[0], decoder[1], dims, multilingual, language or "en")
        decoder_method = f"{decoder[1]} {encoder_method}"
    else:
        tokens, decoder_method = decode_with_pytorch(manifest, features, language, pm), "pytorch"
    tokenizer = get_tokenizer(dims, multilingual)
    text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()
    return {"text": text, "tokens": tokens, "encoder": encoder_method, "decoder": decoder_method}

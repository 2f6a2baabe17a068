"""`wconv transcribe`: speech to text through the converted artifacts of one output directory.

Audio of any length goes window by window as openai-whisper's ``transcribe()`` takes it
(:mod:`wconv.runtime.longform`). The log-mel is the converted MelSpectrogram's when the directory
has one (``--layout whisperkit``), else openai-whisper's on the host; the encoder is the converted
Core ML artifact (Core ML on macOS, the reference evaluator elsewhere), and the decoder a
converted Core ML decoder when the directory has one (stateful preferred, then cache-io; word
timestamps need cache-io's ``alignment_heads_weights``), else openai-whisper's PyTorch decoder
built from the source checkpoint, or from a whisper.cpp output's own ggml file (:func:`source_model`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ..errors import InputError
from ..job import Artifact, ArtifactKind
from ..manifest import read_manifest
from ..runtime.audio import read_wav
from ..runtime.run import WindowEncoder

DECODER_PREFERENCE = (ArtifactKind.DECODER_STATEFUL, ArtifactKind.DECODER_CACHE_IO)


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


def window_encoder(manifest: dict, samples) -> WindowEncoder:
    """The manifest's encoder (behind its MelSpectrogram, if any) over windows of ``samples``."""
    mel_model = listed_artifact(manifest, lambda a: a["kind"] == ArtifactKind.MEL_SPECTROGRAM)
    return WindowEncoder(samples, *encoder_artifact(manifest), mel_model and mel_model[0], manifest["dims"]["n_mels"])


def encode(manifest: dict, audio: Path):
    """Encoder output (1, 1500, n_state) float32 of a wav's first 30 s, and how it was computed."""
    encoder = window_encoder(manifest, read_wav(Path(audio)))
    return encoder(0, 3000), encoder.method


def source_model(manifest: dict, pm=None):
    """The source checkpoint (checked by sha256): its decoder runs on the host when no Core ML one was converted.
    Once it is gone from its path, a whisper.cpp output's own ggml file, which holds the decoder too (``ggml`` family)."""
    from ..sources import load_source

    ggml = next((entry for entry in manifest["artifacts"] if entry["kind"] == "ggml"), None)
    if ggml is not None and not Path(manifest["source"]).exists():
        return load_source(str(Path(manifest["_path"]).parent / ggml["file"]), "ggml", pm)
    return load_source(manifest["source"], manifest["family"], pm, expected_sha256=manifest["checkpoint_sha256"])


def host_decoder(manifest: dict, pm=None):
    """openai-whisper's fp32 decoder of :func:`source_model`, as step functions (the encoder output comes from Core ML)."""
    from ..runtime.decoding import PyTorchDecoder
    from ..runtime.reference import whisper_model

    source = source_model(manifest, pm)
    return PyTorchDecoder(whisper_model(source.dims, source.state_dict, source.alignment_heads, encoder=False))


def decoder_artifact(manifest: dict, kinds=DECODER_PREFERENCE) -> tuple[Path, Artifact] | None:
    """(path, artifact) of the first converted Core ML decoder of ``kinds`` listed in the manifest."""
    for kind in kinds:
        if found := listed_artifact(manifest, lambda a: a["kind"] == kind):
            return found
    return None


def checked_language(language: str | None) -> str | None:
    """``--language`` as a Whisper language code (codes and English names, as openai-whisper takes them)."""
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    if language is None:
        return None
    code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
    if code not in LANGUAGES:
        raise InputError(f"--language {language} is not one of Whisper's languages: give a code such as en, de, fr, zh "
                         "(or leave it out to detect the language)")
    return code


def transcribe(target: Path, audio: Path, language: str | None = None, condition_on_previous_text: bool = True,
               word_timestamps: bool = False, pm=None) -> dict:
    """Transcribe ``audio`` with the artifacts named by ``target`` (an output dir or a manifest).

    Returns :func:`wconv.runtime.longform.transcribe_samples`' result with the ``encoder`` and ``decoder`` used.
    """
    from whisper.model import ModelDimensions

    from ..layouts.contracts import decoder_text_context
    from ..runtime.decoding import channels_first, decoder_steps
    from ..runtime.longform import transcribe_samples
    from ..runtime.run import load_artifact

    language = checked_language(language)
    if not Path(audio).is_file():
        raise InputError(f"audio file {audio} does not exist: give a 16 kHz (or any rate) .wav file")
    manifest = read_manifest(Path(target))
    dims = ModelDimensions(**manifest["dims"])
    found = decoder_artifact(manifest, (ArtifactKind.DECODER_CACHE_IO,) if word_timestamps else DECODER_PREFERENCE)
    if word_timestamps and not (found and any(o["name"] == "alignment_heads_weights" for o in found[1].outputs)):
        raise InputError(f"--word-timestamps needs a cache-io decoder with alignment_heads_weights, which {manifest['_path']} "
                         "does not list: convert with --decoder cache-io or --layout whisperkit")
    samples = read_wav(Path(audio))
    encoder = window_encoder(manifest, samples)
    if found:  # models load with the first window: silent audio loads none
        path, artifact = found
        context = decoder_text_context(artifact)
        loaded = cache(lambda: load_artifact(path, encoder.method))

        def decoder(features):
            return decoder_steps(artifact.kind, loaded(), channels_first(features), dims, context)

        decoder_method = f"{artifact.kind.variant} {encoder.method}"
    else:
        pytorch = cache(lambda: host_decoder(manifest, pm))
        context, decoder_method = None, "pytorch"

        def decoder(features):
            return pytorch().steps(features)

    result = transcribe_samples(samples, encoder, decoder, dims, manifest["multilingual"], language,
                                condition_on_previous_text, word_timestamps, context)
    return {**result, "encoder": encoder.method, "decoder": decoder_method}

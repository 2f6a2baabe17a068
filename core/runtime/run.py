"""Run a saved ``.mlpackage``: Core ML on macOS (CPU_ONLY and ALL compute units), wconv's own numpy
evaluator (:mod:`wconv.runtime.evaluator`) elsewhere, where Core ML cannot run; a Core AI ``.aimodel`` with
coreai-core's runtime (:mod:`wconv.runtime.coreai`); encoder feeds in either layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..job import Artifact


def encoder_inputs(encoder: Artifact, mel: np.ndarray) -> dict:
    """The feed of an encoder for a log-mel ``(1, n_mels, frames)`` or ``(1, n_mels, 1, frames)``."""
    spec = encoder.inputs[0]
    mel = mel.reshape(1, mel.shape[1], 1, -1) if encoder.channels_first else mel.reshape(1, mel.shape[1], -1)
    return {spec["name"]: mel.astype(np.float16 if spec["dtype"] == "float16" else np.float32)}


def encoder_features(encoder: Artifact, outputs: dict) -> np.ndarray:
    """An encoder's prediction in whisper.cpp's layout ``(1, n_audio_ctx, D)`` float32, whichever layout it has."""
    features = np.asarray(outputs[encoder.outputs[0]["name"]], dtype=np.float32)
    return features[:, :, 0, :].transpose(0, 2, 1) if encoder.channels_first else features


def platform_methods(path: Path | None = None) -> tuple[str, ...]:
    """How this machine can run a saved artifact: Core ML compute units on macOS, the evaluator elsewhere;
    a ``.aimodel`` (``path``) with coreai-core's runtime."""
    if path is not None and Path(path).suffix == ".aimodel":
        from .coreai import METHOD

        return (METHOD,)
    return ("coreml-CPU_ONLY", "coreml-ALL") if sys.platform == "darwin" else ("wconv-evaluator",)


def load_artifact(path: Path, method: str | None = None):
    """A saved .mlpackage (or .aimodel) ready for ``predict(inputs, state=None)`` and ``make_state()``."""
    if Path(path).suffix == ".aimodel":
        from .coreai import AIModelRunner

        return AIModelRunner(Path(path))
    method = method or platform_methods()[0]
    if method.startswith("coreml-"):
        import coremltools as ct

        return ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, method.removeprefix("coreml-")))
    from .evaluator import MLProgramEvaluator

    return MLProgramEvaluator.load(path)


def run_artifact(path: Path, inputs: dict, method: str | None = None) -> tuple[dict, str]:
    """Predict once with a saved .mlpackage (or .aimodel); returns the outputs and the method used."""
    method = method or platform_methods(path)[0]
    return load_artifact(path, method).predict(inputs), method


class WindowEncoder:
    """The converted encoder over 30 s windows of one audio: ``encoder(seek, frames)`` is the output
    ``(1, n_audio_ctx, D)`` float32 of the window of ``frames`` mel frames starting at frame ``seek``.

    With a converted MelSpectrogram the window's samples (zero-padded to 30 s) go through it, as
    WhisperKit feeds them; otherwise openai-whisper's log-mel of the whole audio is sliced and
    padded exactly as its ``transcribe()`` does.
    """

    def __init__(self, samples: np.ndarray, encoder_path: Path, encoder: Artifact, mel_model: Path | None, n_mels: int,
                 method: str | None = None):
        self.method = method or platform_methods(encoder_path)[0]
        self.samples, self.artifact, self.paths, self.n_mels = samples, encoder, (encoder_path, mel_model), n_mels
        self.encoder = self.mel_model = self.log_mel = None  # loaded by the first window

    def __call__(self, seek: int, frames: int) -> np.ndarray:
        import whisper

        if self.encoder is None:
            encoder_path, mel_model = self.paths
            self.encoder = load_artifact(encoder_path, self.method)
            self.mel_model = mel_model and load_artifact(mel_model, self.method)
            if mel_model is None:
                self.log_mel = whisper.log_mel_spectrogram(self.samples, self.n_mels, padding=whisper.audio.N_SAMPLES)
        if self.mel_model is not None:
            audio = whisper.pad_or_trim(self.samples[seek * whisper.audio.HOP_LENGTH:(seek + frames) * whisper.audio.HOP_LENGTH])
            mel = self.mel_model.predict({"audio": audio})["melspectrogram_features"]
        else:
            mel = whisper.pad_or_trim(self.log_mel[:, seek:seek + frames], whisper.audio.N_FRAMES).numpy()[None]
        return encoder_features(self.artifact, self.encoder.predict(encoder_inputs(self.artifact, mel)))

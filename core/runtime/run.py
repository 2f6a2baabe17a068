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


def encode_samples(samples: np.ndarray, encoder_path: Path, encoder: Artifact, mel_model: Path | None, n_mels: int,
                   method: str | None = None) -> tuple[np.ndarray, str]:
    """The converted encoder's output for 16 kHz ``samples`` (first 30 s) as ``(1, n_audio_ctx, D)`` float32, and the method.

    ``mel_model`` is a converted MelSpectrogram; without one the log-mel is computed on the host.
    """
    from .audio import host_log_mel

    if mel_model is not None:
        import whisper

        mel = run_artifact(mel_model, {"audio": whisper.pad_or_trim(samples)}, method)[0]["melspectrogram_features"]
    else:
        mel = host_log_mel(samples, n_mels)
    outputs, method = run_artifact(encoder_path, encoder_inputs(encoder, mel), method)
    return encoder_features(encoder, outputs), method

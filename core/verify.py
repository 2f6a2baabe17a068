"""Run a saved artifact and compare it with a reference: metrics, inputs and the platform switch.

On macOS, Core ML itself predicts (CPU_ONLY and ALL compute units). Elsewhere Core ML cannot run,
so wconv's own numpy evaluator (:mod:`wconv.evaluator`) executes the saved ML program.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import InputError


def compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """max/mean abs error, PSNR (argmaxtools' definition) and cosine similarity, all in float64."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    actual = np.asarray(actual, dtype=np.float64).ravel()
    if reference.shape != actual.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, artifact {actual.shape}")
    error = actual - reference
    rmse = float(np.sqrt(np.mean(error**2)))
    cosine = float(reference @ actual / (np.linalg.norm(reference) * np.linalg.norm(actual) + 1e-30))
    return {
        "max_abs_error": float(np.max(np.abs(error))),
        "mean_abs_error": float(np.mean(np.abs(error))),
        "psnr": float(20 * np.log10((np.max(np.abs(reference)) + 1e-5) / (rmse + 1e-10))),
        "cosine_similarity": cosine,
    }


def host_log_mel(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """openai-whisper's log-mel of the first 30 s of 16 kHz samples (zero-padded), as (1, n_mels, 3000) float32."""
    import whisper

    return whisper.log_mel_spectrogram(whisper.pad_or_trim(np.asarray(samples, np.float32)), n_mels=n_mels).numpy()[None]


def log_mel_of(audio_path: Path, n_mels: int, frames: int) -> np.ndarray:
    """openai-whisper's log-mel of a wav (no ffmpeg) or a saved .npy mel, as (1, n_mels, frames)."""
    if audio_path.suffix == ".npy":
        mel = np.load(audio_path, allow_pickle=False).astype(np.float32)
        mel = mel.reshape(1, n_mels, -1)
    else:
        mel = host_log_mel(read_wav(audio_path), n_mels)
    if mel.shape[-1] < frames:
        mel = np.pad(mel, ((0, 0), (0, 0), (0, frames - mel.shape[-1])), constant_values=mel.min())
    return np.ascontiguousarray(mel[..., :frames], dtype=np.float32)


def read_wav(path: Path) -> np.ndarray:
    """16 kHz mono float32 samples of a wav file (resampled with numpy if needed, no ffmpeg)."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as e:
        raise InputError(f"cannot read audio {path}: {e}; give a .wav file") from e
    samples = samples.mean(axis=1)
    if rate != 16000:
        positions = np.arange(0, len(samples), rate / 16000)
        samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
    return samples


def bundled_speech() -> Path:
    """A short English speech clip shipped with wconv, the default verification input."""
    return Path(__file__).parent / "assets" / "speech.wav"


def reference_input(n_mels: int, frames: int, given: Path | None) -> tuple[np.ndarray, str]:
    """The log-mel to verify with: ``given`` (wav/npy), else the bundled clip, else seeded noise."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise InputError(f"verify input {given} does not exist: give a .wav or .npy file")
        return log_mel_of(given, n_mels, frames), f"log-mel of {given.name}"
    clip = bundled_speech()
    if clip.is_file():
        return log_mel_of(clip, n_mels, frames), "log-mel of bundled speech clip"
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, n_mels, frames)).astype(np.float32), "seeded noise"


def reference_audio(given: Path | None) -> tuple[np.ndarray, str]:
    """16 kHz samples to verify a MelSpectrogram model with: ``given`` if it is audio, else the bundled clip."""
    if is_audio_file(given):
        given = Path(given)
        if not given.is_file():
            raise InputError(f"verify input {given} does not exist: give a .wav or .npy file")
        return read_wav(given), given.name
    clip = bundled_speech()
    if clip.is_file():
        return read_wav(clip), "bundled speech clip"
    return 0.1 * np.random.default_rng(0).standard_normal(160000).astype(np.float32), "seeded noise"


def is_audio_file(path: Path | None) -> bool:
    return path is not None and Path(path).suffix != ".npy"


def encoder_inputs(io, mel: np.ndarray) -> dict:
    """The feed of an encoder (Artifact or manifest entry) for a log-mel ``(1, n_mels, frames)`` or ``(1, n_mels, 1, frames)``."""
    from .artifacts import channels_first_encoder, io_specs

    spec = io_specs(io)[0][0]
    mel = mel.reshape(1, mel.shape[1], 1, -1) if channels_first_encoder(io) else mel.reshape(1, mel.shape[1], -1)
    return {spec["name"]: mel.astype(np.float16 if spec["dtype"] == "float16" else np.float32)}


def encoder_features(io, outputs: dict) -> np.ndarray:
    """An encoder's prediction in whisper.cpp's layout ``(1, n_audio_ctx, D)`` float32, whichever layout it has."""
    from .artifacts import channels_first_encoder, io_specs

    spec = io_specs(io)[1][0]
    features = np.asarray(outputs[spec["name"]], dtype=np.float32)
    return features[:, :, 0, :].transpose(0, 2, 1) if channels_first_encoder(io) else features


def platform_methods() -> tuple[str, ...]:
    """How this machine can run a saved artifact: Core ML compute units on macOS, the evaluator elsewhere."""
    return ("coreml-CPU_ONLY", "coreml-ALL") if sys.platform == "darwin" else ("wconv-evaluator",)


def load_artifact(path: Path, method: str | None = None):
    """A saved .mlpackage ready for ``predict(inputs, state=None)`` and ``make_state()``."""
    method = method or platform_methods()[0]
    if method.startswith("coreml-"):
        import coremltools as ct

        return ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, method.removeprefix("coreml-")))
    from .evaluator import MLProgramEvaluator

    return MLProgramEvaluator.load(path)


def run_artifact(path: Path, inputs: dict, method: str | None = None) -> tuple[dict, str]:
    """Predict once with a saved .mlpackage; returns the outputs and the method used."""
    method = method or platform_methods()[0]
    return load_artifact(path, method).predict(inputs), method

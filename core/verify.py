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


def log_mel_of(audio_path: Path, n_mels: int, frames: int) -> np.ndarray:
    """openai-whisper's log-mel of a wav (no ffmpeg) or a saved .npy mel, as (1, n_mels, frames)."""
    if audio_path.suffix == ".npy":
        mel = np.load(audio_path, allow_pickle=False).astype(np.float32)
        mel = mel.reshape(1, n_mels, -1)
    else:
        import whisper

        audio = read_wav(audio_path)
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), n_mels=n_mels).numpy()[None]
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

"""Audio for the runtime: 16 kHz samples from wav files (no ffmpeg) and openai-whisper's log-mel of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


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


SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS: quieter than any recorded speech


def silence_problem(samples: np.ndarray) -> str | None:
    """Why ``samples`` cannot hold speech (empty, or no sample above -60 dBFS), else None."""
    if len(samples) < 160:
        return f"the audio is empty ({len(samples)} samples)"
    peak = float(np.max(np.abs(samples)))
    if peak < SILENCE_PEAK:
        return f"the audio is silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS, below -60)"
    return None


def bundled_speech() -> Path:
    """A short English speech clip shipped with wconv, the default verification input."""
    return Path(__file__).parents[1] / "assets" / "speech.wav"


def is_audio_file(path: Path | None) -> bool:
    return path is not None and Path(path).suffix != ".npy"

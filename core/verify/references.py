"""What a saved artifact is compared with: the verification inputs (a wav, a log-mel, the bundled clip)
and openai-whisper's fp32 outputs for them on the source weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..job import LoadedModel
from ..runtime.audio import bundled_speech, is_audio_file, log_mel_of, read_wav


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


def logit_tokens(model: LoadedModel) -> list[int]:
    """The tokens a decoder's logits are compared on: the transcription prompt and a few English words."""
    from ..runtime.decoding import get_tokenizer

    tokenizer = get_tokenizer(model.dims, model.multilingual)
    return list(tokenizer.sot_sequence_including_notimestamps) + tokenizer.encode(" The quick brown fox")

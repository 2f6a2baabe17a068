"""Transcribe a wav with whisper.cpp (pywhispercpp's bindings) and print JSON {"text", "tokens"}.

Usage: python tests/whispercpp_runner.py <model.bin> <audio.wav>

Run it in a subprocess: whisper.cpp aborts the process on some bad models. A model it refuses to load is reported
here from its error log (exit 1), because the bindings hand back a context object even then and the next call
would crash. Decoding mirrors openai-whisper's greedy ``DecodingOptions(temperature=0, without_timestamps=True)``:
one decoder, no temperature fallback, no timestamps, one segment, no previous-text context, English,
non-speech tokens suppressed (openai's ``suppress_tokens="-1"``), flash attention off.
``tokens`` are the text token ids (below end-of-text), as in openai-whisper's ``DecodingResult.tokens``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 16000
GGML_LOG_LEVEL_ERROR = 4


def transcribe(model_path: str, audio: np.ndarray, n_threads: int = 2) -> dict:
    """Greedy whisper.cpp transcription of 16 kHz mono float32 ``audio``: {"text": str, "tokens": [int]}."""
    import _pywhispercpp as whisper_cpp

    if not Path(model_path).is_file():  # a plain error rather than a failed load in whisper.cpp's log
        raise FileNotFoundError(model_path)
    load_errors = []

    def forward_log(level, text, *_):
        sys.stderr.write(text)
        if level == GGML_LOG_LEVEL_ERROR:
            load_errors.append(text.strip())

    whisper_cpp.whisper_log_set(forward_log)
    context_params = whisper_cpp.whisper_context_default_params()
    context_params.use_gpu = False
    context_params.flash_attn = False
    context = whisper_cpp.whisper_init_from_file_with_params(model_path, context_params)
    whisper_cpp.whisper_log_set(None)
    if load_errors:
        raise RuntimeError(f"whisper.cpp could not load {model_path}: {'; '.join(load_errors)}")

    params = whisper_cpp.whisper_full_default_params(whisper_cpp.WHISPER_SAMPLING_GREEDY)
    settings = dict(
        n_threads=n_threads, language="en", translate=False, detect_language=False,
        temperature=0.0, temperature_inc=0.0, greedy={"best_of": 1},
        no_timestamps=True, single_segment=True, no_context=True, suppress_nst=True,
        print_progress=False, print_realtime=False, print_timestamps=False, print_special=False,
    )
    for name, value in settings.items():
        setattr(params, name, value)
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if whisper_cpp.whisper_full(context, params, samples, samples.size) != 0:
        raise RuntimeError("whisper_full failed")

    end_of_text = whisper_cpp.whisper_token_eot(context)
    text, tokens = [], []
    for segment in range(whisper_cpp.whisper_full_n_segments(context)):
        text.append(whisper_cpp.whisper_full_get_segment_text(context, segment).decode("utf-8", errors="replace"))
        for index in range(whisper_cpp.whisper_full_n_tokens(context, segment)):
            token = whisper_cpp.whisper_full_get_token_id(context, segment, index)
            if token < end_of_text:
                tokens.append(token)
    whisper_cpp.whisper_free(context)
    return {"text": "".join(text), "tokens": tokens}


def read_wav(path: str) -> np.ndarray:
    """A 16 kHz wav as mono float32."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path} is {rate} Hz; whisper.cpp needs {SAMPLE_RATE} Hz")
    return audio.mean(axis=1)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    model_path, wav_path = argv
    try:
        result = transcribe(model_path, read_wav(wav_path))
    except (OSError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

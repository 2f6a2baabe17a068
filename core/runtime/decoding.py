"""Greedy decoding on the host, one prediction of a converted decoder (stateful or cache-io) per token.

The tokens equal openai-whisper's ``decode(model, mel, DecodingOptions(language=..., task="transcribe",
without_timestamps=True, temperature=0))``: the prompt is its ``sot_sequence_including_notimestamps``,
the "-1" set of non-speech and special tokens is always suppressed (``SuppressTokens``), blank and
end-of-text are suppressed at the first sampled token (``SuppressBlank``), and at most
``n_text_ctx // 2`` tokens are sampled (its ``sample_len``), never past the text context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..job import ArtifactKind
from ..layouts.contracts import MASKED
from .run import load_artifact

StepFunction = Callable[[int, int], np.ndarray]  # (token, position) -> logits (n_vocab,)


def channels_first(encoder_output: np.ndarray) -> np.ndarray:
    """whisper.cpp's encoder output ``(1, n_audio_ctx, D)`` as the decoders' fp16 ``(1, D, 1, n_audio_ctx)``."""
    return np.ascontiguousarray(encoder_output.transpose(0, 2, 1)[:, :, None, :], dtype=np.float16)


class StatefulSteps:
    """Steps of a stateful decoder: its Core ML state holds the self-attention cache."""

    def __init__(self, model, encoder_output_embeds: np.ndarray):
        self.model = model
        self.state = model.make_state()
        self.encoder_output_embeds = encoder_output_embeds

    def __call__(self, token: int, position: int) -> np.ndarray:
        inputs = {
            "input_ids": np.array([token], dtype=np.int32),
            "cache_length": np.array([position], dtype=np.int32),
            "encoder_output_embeds": self.encoder_output_embeds,
        }
        return self.model.predict(inputs, state=self.state)["logits"].reshape(-1)


class CacheIOSteps:
    """Steps of a cache-io decoder, driven as WhisperKit does: the host owns caches and masks.

    Each step unmasks its own position, marks it in the one-hot update mask, and afterwards
    writes the returned key/value slices into the host caches at that position. Caches and masks
    have the float type of ``encoder_output_embeds`` (fp16 for Core ML).
    """

    def __init__(self, model, encoder_output_embeds: np.ndarray, dims):
        self.model = model
        self.encoder_output_embeds = encoder_output_embeds
        dtype = encoder_output_embeds.dtype
        cache_shape = (1, dims.n_text_state * dims.n_text_layer, 1, dims.n_text_ctx)
        self.key_cache = np.zeros(cache_shape, dtype=dtype)
        self.value_cache = np.zeros(cache_shape, dtype=dtype)
        self.padding_mask = np.full((1, dims.n_text_ctx), MASKED, dtype=dtype)

    def __call__(self, token: int, position: int) -> np.ndarray:
        update_mask = np.zeros_like(self.padding_mask)
        update_mask[0, position] = 1
        self.padding_mask[0, position] = 0
        outputs = self.model.predict({
            "input_ids": np.array([token], dtype=np.int32),
            "cache_length": np.array([position], dtype=np.int32),
            "key_cache": self.key_cache,
            "value_cache": self.value_cache,
            "kv_cache_update_mask": update_mask,
            "encoder_output_embeds": self.encoder_output_embeds,
            "decoder_key_padding_mask": self.padding_mask,
        })
        self.key_cache[..., position] = outputs["key_cache_updates"][..., 0]
        self.value_cache[..., position] = outputs["value_cache_updates"][..., 0]
        return outputs["logits"].reshape(-1)


STEPS = {
    ArtifactKind.DECODER_STATEFUL: lambda model, encoder_output_embeds, dims: StatefulSteps(model, encoder_output_embeds),
    ArtifactKind.DECODER_CACHE_IO: CacheIOSteps,
}


def decoder_steps(kind: ArtifactKind | str, model, encoder_output_embeds: np.ndarray, dims) -> StepFunction:
    """The step function of a loaded decoder of ``kind`` for one encoder output ``(1, D, 1, n_audio_ctx)``."""
    return STEPS[ArtifactKind(kind)](model, encoder_output_embeds, dims)


def greedy_decode(step: StepFunction, prompt_tokens: Sequence[int], eot: int, max_tokens: int, n_text_ctx: int,
                  suppress_tokens: Sequence[int] = (), suppress_at_begin: Sequence[int] = ()) -> list[int]:
    """Feed the prompt, then each step's best token, until end-of-text, ``max_tokens`` sampled or a full context.

    ``suppress_tokens`` are never sampled, ``suppress_at_begin`` not as the first token.
    Returns the sampled tokens, without the end-of-text.
    """
    for position, token in enumerate(prompt_tokens[:-1]):
        step(token, position)
    token, position = prompt_tokens[-1], len(prompt_tokens) - 1
    sampled: list[int] = []
    while len(sampled) < max_tokens and position < n_text_ctx:
        logits = np.array(step(token, position), dtype=np.float32)
        logits[list(suppress_tokens)] = -np.inf
        if not sampled:
            logits[list(suppress_at_begin)] = -np.inf
        token = int(np.argmax(logits))
        if token == eot:
            break
        sampled.append(token)
        position += 1
    return sampled


def get_tokenizer(dims, multilingual: bool, language: str = "en"):
    """openai-whisper's transcription tokenizer for a model of these dimensions."""
    from whisper.tokenizer import get_tokenizer as whisper_tokenizer

    num_languages = dims.n_vocab - 51765 - int(multilingual)
    return whisper_tokenizer(multilingual, num_languages=num_languages, language=language, task="transcribe")


def suppressed_tokens(tokenizer) -> list[int]:
    """openai-whisper's default ``suppress_tokens="-1"``: non-speech symbols and the special task tokens."""
    special = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm]
    if tokenizer.no_speech is not None:
        special.append(tokenizer.no_speech)
    return sorted(set(tokenizer.non_speech_tokens) | set(special))


def transcribe_tokens(encoder_output: np.ndarray, decoder_path: Path, kind: ArtifactKind | str, dims, multilingual: bool,
                      language: str = "en", method: str | None = None) -> list[int]:
    """Greedy text tokens (no timestamps, no end-of-text) for one encoder output.

    ``encoder_output`` is whisper.cpp's encoder output ``(1, n_audio_ctx, D)`` float32;
    ``decoder_path`` a saved decoder of ``kind``; ``dims`` the model's
    ``whisper.model.ModelDimensions``; ``language`` is ignored by English-only models; ``method``
    how to run the decoder (see :func:`wconv.runtime.run.platform_methods`; default: this machine's first).
    """
    tokenizer = get_tokenizer(dims, multilingual, language)
    step = decoder_steps(kind, load_artifact(decoder_path, method), channels_first(encoder_output), dims)
    return greedy_decode(
        step, tokenizer.sot_sequence_including_notimestamps, tokenizer.eot, max_tokens=dims.n_text_ctx // 2,
        n_text_ctx=dims.n_text_ctx, suppress_tokens=suppressed_tokens(tokenizer),
        suppress_at_begin=tokenizer.encode(" ") + [tokenizer.eot],
    )

"""Greedy decoding on the host, one prediction of a converted decoder (stateful or cache-io) per token.

The tokens equal openai-whisper's ``decode(model, mel, DecodingOptions(language=..., task="transcribe",
without_timestamps=True, temperature=0))``: the prompt is its ``sot_sequence_including_notimestamps``,
the "-1" set of non-speech and special tokens is always suppressed (``SuppressTokens``), blank and
end-of-text are suppressed at the first sampled token (``SuppressBlank``), and at most
``n_text_ctx // 2`` tokens are sampled (its ``sample_len``), never past the text context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..job import ArtifactKind
from ..layouts.contracts import MASKED
from .run import load_artifact

StepFunction = Callable[[int, int], np.ndarray]  # (token, position) -> logits (n_vocab,)
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper's max_initial_timestamp 1.0 s in 0.02 s timestamp steps


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
    """Steps of a cache-io decoder, driven as WhisperKit's ``TextDecoder.decodeText`` drives it.

    The host owns the fp16 caches, the int32 one-hot ``kv_cache_update_mask`` (1 at position 0 to
    start) and the fp16 additive ``decoder_key_padding_mask`` (-1e4, 0 at position 0). After each
    prediction at ``position`` it writes the returned key/value slices there, unmasks
    ``position + 1`` and moves the update mask to it. ``alignment`` collects each step's
    ``alignment_heads_weights`` when the decoder has that output.
    """

    def __init__(self, model, encoder_output_embeds: np.ndarray, dims, text_context: int | None = None):
        self.model = model
        self.encoder_output_embeds = encoder_output_embeds
        context = text_context or dims.n_text_ctx
        cache_shape = (1, dims.n_text_state * dims.n_text_layer, 1, context)
        self.key_cache = np.zeros(cache_shape, dtype=encoder_output_embeds.dtype)
        self.value_cache = np.zeros(cache_shape, dtype=encoder_output_embeds.dtype)
        self.update_mask = np.zeros((1, context), dtype=np.int32)
        self.padding_mask = np.full((1, context), MASKED, dtype=encoder_output_embeds.dtype)
        self.update_mask[0, 0], self.padding_mask[0, 0] = 1, 0
        self.alignment: list[np.ndarray] = []

    def __call__(self, token: int, position: int) -> np.ndarray:
        outputs = self.model.predict({
            "input_ids": np.array([token], dtype=np.int32),
            "cache_length": np.array([position], dtype=np.int32),
            "key_cache": self.key_cache,
            "value_cache": self.value_cache,
            "kv_cache_update_mask": self.update_mask,
            "encoder_output_embeds": self.encoder_output_embeds,
            "decoder_key_padding_mask": self.padding_mask,
        })
        self.key_cache[..., position] = outputs["key_cache_updates"][..., 0]
        self.value_cache[..., position] = outputs["value_cache_updates"][..., 0]
        if position + 1 < self.update_mask.shape[1]:
            self.padding_mask[0, position + 1] = 0
            self.update_mask[0, position] = 0
            self.update_mask[0, position + 1] = 1
        if "alignment_heads_weights" in outputs:
            self.alignment.append(np.asarray(outputs["alignment_heads_weights"], dtype=np.float32).reshape(-1))
        return outputs["logits"].reshape(-1)


STEPS = {
    ArtifactKind.DECODER_STATEFUL: lambda model, encoder_output_embeds, dims, text_context: StatefulSteps(model, encoder_output_embeds),
    ArtifactKind.DECODER_CACHE_IO: CacheIOSteps,
}


def decoder_steps(kind: ArtifactKind | str, model, encoder_output_embeds: np.ndarray, dims, text_context: int | None = None) -> StepFunction:
    """The step function of a loaded decoder of ``kind`` for one encoder output ``(1, D, 1, n_audio_ctx)``.

    ``text_context`` is the decoder's cache length (default the model's ``n_text_ctx``)."""
    return STEPS[ArtifactKind(kind)](model, encoder_output_embeds, dims, text_context)


class PyTorchDecoder:
    """openai-whisper's own fp32 decoder as step functions; its key/value cache hooks are on the model only during a step."""

    def __init__(self, model):
        self.model = model

    def steps(self, encoder_output: np.ndarray) -> StepFunction:
        """Steps over one encoder output ``(1, n_audio_ctx, D)``, each with its own cache."""
        import torch

        audio = torch.from_numpy(np.ascontiguousarray(encoder_output, dtype=np.float32))
        cache: dict = {}

        def step(token: int, position: int) -> np.ndarray:
            nonlocal cache
            cache, hooks = self.model.install_kv_cache_hooks(cache)
            try:
                with torch.no_grad():
                    return self.model.decoder(torch.tensor([[token]]), audio, kv_cache=cache)[0, -1].numpy()
            finally:
                for hook in hooks:
                    hook.remove()

        return step


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
                      language: str = "en", method: str | None = None, text_context: int | None = None) -> list[int]:
    """Greedy text tokens (no timestamps, no end-of-text) for one encoder output.

    ``encoder_output`` is whisper.cpp's encoder output ``(1, n_audio_ctx, D)`` float32;
    ``decoder_path`` a saved decoder of ``kind``; ``dims`` the model's
    ``whisper.model.ModelDimensions``; ``language`` is ignored by English-only models; ``method``
    how to run the decoder (see :func:`wconv.runtime.run.platform_methods`; default: this machine's first);
    ``text_context`` the decoder's cache length (default ``dims.n_text_ctx``).
    """
    tokenizer = get_tokenizer(dims, multilingual, language)
    step = decoder_steps(kind, load_artifact(decoder_path, method), channels_first(encoder_output), dims, text_context)
    return decode_window(step, tokenizer, without_timestamps=True, text_context=text_context or dims.n_text_ctx).tokens


@dataclass
class WindowResult:
    """What one 30 s window decodes to, as openai-whisper's ``DecodingResult`` reports it."""

    tokens: list[int]  # sampled tokens, without the end-of-text
    avg_logprob: float
    no_speech_prob: float


def decode_window(step: StepFunction, tokenizer, prompt: Sequence[int] = (), without_timestamps: bool = False,
                  text_context: int = 448) -> WindowResult:
    """openai-whisper's greedy ``DecodingTask`` (temperature 0) over one window, one ``step`` per token.

    The initial tokens are ``[sot_prev, *prompt[-(text_context // 2 - 1):]]`` (when there is a prompt)
    and the start-of-transcript sequence; openai-whisper's own logit filters (``SuppressBlank``,
    ``SuppressTokens``, ``ApplyTimestampRules`` unless ``without_timestamps``) shape every step; at
    most ``text_context // 2`` tokens are sampled and no position reaches ``text_context``.
    """
    import torch
    from whisper.decoding import ApplyTimestampRules, SuppressBlank, SuppressTokens

    initial = list(tokenizer.sot_sequence_including_notimestamps if without_timestamps else tokenizer.sot_sequence)
    if prompt:
        initial = [tokenizer.sot_prev, *list(prompt)[-(text_context // 2 - 1):], *initial]
    sample_begin, sot_index = len(initial), initial.index(tokenizer.sot)
    filters = [SuppressBlank(tokenizer, sample_begin), SuppressTokens(suppressed_tokens(tokenizer))]
    if not without_timestamps:
        filters.append(ApplyTimestampRules(tokenizer, sample_begin, max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX))
    no_speech_prob = float("nan")
    for position, token in enumerate(initial):
        logits = torch.as_tensor(np.asarray(step(token, position), dtype=np.float32))[None]
        if position == sot_index and tokenizer.no_speech is not None:
            no_speech_prob = float(logits.softmax(-1)[0, tokenizer.no_speech])
    tokens, sum_logprob = list(initial), 0.0
    while True:
        for logit_filter in filters:
            logit_filter.apply(logits, torch.tensor([tokens]))
        token = int(logits.argmax())
        sum_logprob += float(logits.log_softmax(-1)[0, token])
        if token == tokenizer.eot:
            break
        tokens.append(token)
        if len(tokens) - sample_begin >= text_context // 2 or len(tokens) > text_context:
            break
        logits = torch.as_tensor(np.asarray(step(token, len(tokens) - 1), dtype=np.float32))[None]
    sampled = tokens[sample_begin:]
    return WindowResult(sampled, sum_logprob / (len(sampled) + 1), no_speech_prob)


def detect_language(step: StepFunction, tokenizer) -> tuple[str, dict[str, float]]:
    """openai-whisper's ``detect_language``: the language tokens' logits after start-of-transcript at position 0."""
    import torch

    logits = torch.as_tensor(np.asarray(step(tokenizer.sot, 0), dtype=np.float32))
    probabilities = logits[list(tokenizer.all_language_tokens)].softmax(-1).tolist()
    by_language = dict(zip(tokenizer.all_language_codes, probabilities))
    return max(by_language, key=by_language.get), by_language

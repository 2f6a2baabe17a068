"""Audio of any length, window by window, as openai-whisper's ``transcribe()`` does it (temperature 0).

Each 30 s window is encoded, then decoded greedily with timestamps (:func:`decode_window`), the
text so far as prompt unless ``condition_on_previous_text`` is off. The next window starts at the
last timestamp token (or after the window when it ends on a single timestamp); a window whose
``no_speech_prob`` exceeds 0.6 with an average log-probability of at most -1 is skipped. The
language, when not given, is detected from the first window (:func:`detect_language`). Word
timestamps align each window's words to the audio with openai-whisper's DTW over the cache-io
decoder's ``alignment_heads_weights``.

Any encoder and decoder fit: ``encode(seek, frames)`` gives a window's encoder output
``(1, n_audio_ctx, D)`` float32, ``decoder(encoder_output)`` a fresh step function for it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .audio import silence_problem
from .decoding import StepFunction, decode_window, detect_language, get_tokenizer

HOP_LENGTH, SAMPLE_RATE, N_FRAMES = 160, 16000, 3000  # openai-whisper's audio constants
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
INPUT_STRIDE = 2  # mel frames per encoder output position
TIME_PRECISION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp token: 0.02
NO_SPEECH_THRESHOLD, LOGPROB_THRESHOLD = 0.6, -1.0  # openai-whisper's defaults
PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS = "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、"
SENTENCE_ENDS = ".。!！?？"

Encode = Callable[[int, int], np.ndarray]
Decoder = Callable[[np.ndarray], StepFunction]


def transcribe_samples(samples: np.ndarray, encode: Encode, decoder: Decoder, dims, multilingual: bool,
                       language: str | None = None, condition_on_previous_text: bool = True, word_timestamps: bool = False,
                       text_context: int | None = None) -> dict:
    """``{"text", "language", "segments": [{start, end, text[, words]}], "tokens"}`` of 16 kHz ``samples``;
    ``"note"`` says why there is no text when there is none."""
    text_context = text_context or dims.n_text_ctx
    content_frames = len(samples) // HOP_LENGTH
    if problem := silence_problem(samples):
        return {"text": "", "language": language, "segments": [], "tokens": [], "note": f"no speech: {problem}"}
    first_window = encode(0, min(N_FRAMES, content_frames))
    if language is None:
        language = detect_language(decoder(first_window), get_tokenizer(dims, multilingual))[0] if multilingual else "en"
    tokenizer = get_tokenizer(dims, multilingual, language)
    seek, all_tokens, segments, prompt_reset_since, last_speech = 0, [], [], 0, 0.0
    while seek < content_frames:
        time_offset = seek / FRAMES_PER_SECOND
        frames = min(N_FRAMES, content_frames - seek)
        features = first_window if seek == 0 else encode(seek, frames)
        result = decode_window(decoder(features), tokenizer, all_tokens[prompt_reset_since:], text_context=text_context)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob <= LOGPROB_THRESHOLD:
            seek += frames
            continue
        window_segments, ends_on_single_timestamp, advance = split_segments(result.tokens, tokenizer, time_offset, frames)
        seek += advance
        if word_timestamps:
            add_words(window_segments, word_timings(decoder(features), tokenizer, window_segments, frames), tokenizer.eot,
                      time_offset, last_speech)
            ends = [word["end"] for segment in window_segments for word in segment["words"]]
            if ends and not ends_on_single_timestamp and ends[-1] > time_offset:
                seek = round(ends[-1] * FRAMES_PER_SECOND)
            last_speech = ends[-1] if ends else last_speech
        for segment in window_segments:
            if segment["start"] == segment["end"] or not segment["text"].strip():
                segment.update(text="", tokens=[], **({"words": []} if word_timestamps else {}))
            segments.append(segment)
            all_tokens.extend(segment.pop("tokens"))
        if not condition_on_previous_text:
            prompt_reset_since = len(all_tokens)
    text = tokenizer.decode(all_tokens).strip()
    note = {} if text else {"note": "no speech detected"}
    return {"text": text, "language": language, "segments": [s for s in segments if s["text"]], "tokens": all_tokens, **note}


def split_segments(tokens: list[int], tokenizer, time_offset: float, frames: int) -> tuple[list[dict], bool, int]:
    """openai-whisper's segments of one window's tokens, whether they end on a single timestamp, and how
    many frames to move on: to the last timestamp pair, or past the window."""
    begin = tokenizer.timestamp_begin
    is_timestamp = [token >= begin for token in tokens]
    single_ending = is_timestamp[-2:] == [False, True]
    pairs = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]

    def segment(start: float, end: float, sliced: list[int]) -> dict:
        return {"start": round(start, 3), "end": round(end, 3), "text": tokenizer.decode([t for t in sliced if t < tokenizer.eot]),
                "tokens": sliced}

    if not pairs:
        timestamps = [token for token in tokens if token >= begin]
        duration = (timestamps[-1] - begin) * TIME_PRECISION if timestamps and timestamps[-1] != begin else frames / FRAMES_PER_SECOND
        return [segment(time_offset, time_offset + duration, tokens)], single_ending, frames
    segments, last = [], 0
    for end in pairs + ([len(tokens)] if single_ending else []):
        sliced = tokens[last:end]
        segments.append(segment(time_offset + (sliced[0] - begin) * TIME_PRECISION, time_offset + (sliced[-1] - begin) * TIME_PRECISION, sliced))
        last = end
    return segments, single_ending, frames if single_ending else (tokens[last - 1] - begin) * INPUT_STRIDE


def word_timings(step: StepFunction, tokenizer, segments: list[dict], frames: int) -> list:
    """openai-whisper's ``find_alignment`` over a cache-io decoder's ``alignment_heads_weights``.

    The decoder gives the alignment heads' softmax over all 1500 positions, already averaged; it
    is renormalised over the window's audio positions, standardised over tokens, median-filtered
    (width 7) and aligned by openai-whisper's ``dtw``. Returns ``whisper.timing.WordTiming``s.
    """
    import torch
    from whisper.timing import WordTiming, dtw, median_filter

    text_tokens = [token for segment in segments for token in segment["tokens"] if token < tokenizer.eot]
    if not text_tokens:
        return []
    tokens = [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    logits = np.stack([step(token, position) for position, token in enumerate(tokens)]).astype(np.float32)
    begin = len(tokenizer.sot_sequence)
    probabilities = torch.from_numpy(logits[begin:, : tokenizer.eot]).softmax(-1)
    text_probabilities = probabilities[np.arange(len(text_tokens)), text_tokens].tolist()
    weights = np.stack(step.alignment)[:, : frames // INPUT_STRIDE]
    weights = torch.from_numpy(weights / weights.sum(-1, keepdims=True))
    std, mean = torch.std_mean(weights, dim=0, keepdim=True, unbiased=False)
    matrix = median_filter((weights - mean) / std, 7)[begin:-1]
    text_indices, time_indices = dtw(-matrix)
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] * TIME_PRECISION
    return [WordTiming(word, word_token_ids, float(start), float(end), float(np.mean(text_probabilities[i:j])))
            for word, word_token_ids, start, end, i, j in zip(words, word_tokens, jump_times[boundaries[:-1]],
                                                             jump_times[boundaries[1:]], boundaries[:-1], boundaries[1:])]


def add_words(segments: list[dict], alignment: list, eot: int, time_offset: float, last_speech: float) -> None:
    """``words`` for each segment of a window from its alignment, by openai-whisper's ``add_word_timestamps`` rules:
    long words cut at sentence ends and after pauses, punctuation merged, segment bounds moved to their words."""
    from whisper.timing import merge_punctuations

    durations = np.array([timing.end - timing.start for timing in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    for previous, timing in zip(alignment, alignment[1:]):
        if len(durations) and timing.end - timing.start > longest:
            if timing.word in SENTENCE_ENDS:
                timing.end = timing.start + longest
            elif previous.word in SENTENCE_ENDS:
                timing.start = timing.end - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    index = 0
    for segment in segments:
        text_tokens, covered, words = sum(token < eot for token in segment["tokens"]), 0, []
        while index < len(alignment) and covered < text_tokens:
            timing = alignment[index]
            if timing.word:
                words.append({"word": timing.word, "start": round(time_offset + timing.start, 2),
                              "end": round(time_offset + timing.end, 2), "probability": timing.probability})
            covered, index = covered + len(timing.tokens), index + 1
        segment["words"] = words
        if not words:
            continue
        first, last = words[0], words[-1]
        if first["end"] - last_speech > median * 4 and (
                first["end"] - first["start"] > longest or (len(words) > 1 and words[1]["end"] - first["start"] > longest * 2)):
            if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
                first["end"] = words[1]["start"] = max(words[1]["end"] / 2, words[1]["end"] - longest)
            first["start"] = max(0, first["end"] - longest)
        if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
            first["start"] = max(0, min(first["end"] - median, segment["start"]))
        else:
            segment["start"] = first["start"]
        if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
            last["end"] = max(last["start"] + median, segment["end"])
        else:
            segment["end"] = last["end"]
        last_speech = segment["end"]

"""`wconv transcribe` as openai-whisper's ``transcribe()``: audio over 60 s window by window through every target,
language detection through the converted decoders, word timestamps from the cache-io decoder's
``alignment_heads_weights``, "no speech" for empty and silent audio, ``--language`` checked first (real base weights)."""

import json
import subprocess

import numpy as np
import pytest
import soundfile
import torch
import whisper
from whisper.normalizers import EnglishTextNormalizer

from wconv.conversion.steps import build_decoder
from wconv.job import Artifact, ArtifactKind
from wconv.manifest import describe_io
from wconv.runtime.audio import read_wav
from wconv.runtime.decoding import PyTorchDecoder, channels_first, decoder_steps, detect_language, get_tokenizer
from wconv.runtime.longform import add_words, split_segments, transcribe_samples, word_timings
from wconv.runtime.run import WindowEncoder, load_artifact
from wconv.verify.metrics import edit_distance

from conftest import TorchPredictor, invoke

GERMAN = "Guten Morgen. Heute ist ein schöner Tag, und wir gehen zusammen in den Park."


def word_error_rate(text: str, reference: str) -> float:
    normalize = EnglishTextNormalizer()
    words, expected = normalize(text).split(), normalize(reference).split()
    return edit_distance(words, expected) / len(expected)


@pytest.fixture(scope="module")
def long_clip(speech_clips, module_tmp):
    """The three clips, 2 s of silence after each, three times over: 69 s of speech and pauses."""
    pause = np.zeros(32000, dtype=np.float32)
    samples = np.concatenate([part for _ in range(3) for clip in speech_clips for part in (read_wav(clip), pause)])
    path = module_tmp("long") / "long.wav"
    soundfile.write(path, samples, 16000)
    assert len(samples) / 16000 > 60
    return path, samples


@pytest.fixture(scope="module")
def german_clip(module_tmp):
    """A German sentence spoken by espeak-ng, resampled to 16 kHz mono by sox as tests/data/make_clips.sh does."""
    folder = module_tmp("german")
    subprocess.run(["espeak-ng", "-v", "de", "-s", "150", "-w", folder / "de_22k.wav", GERMAN], check=True)
    subprocess.run(["sox", folder / "de_22k.wav", "-D", "-r", "16000", "-c", "1", "-b", "16", folder / "de.wav"], check=True)
    return folder / "de.wav"


@pytest.fixture(scope="module")
def openai_long(openai_base_model, long_clip):
    """openai-whisper's own transcribe() of the long clip, fp32, temperature 0: with and without the previous text as prompt."""
    def run(**options):
        return whisper.transcribe(openai_base_model, long_clip[1], language="en", temperature=0, fp16=False, **options)

    return {"prompted": run(), "unprompted": run(condition_on_previous_text=False)}


def pytorch_encoder(model, samples):
    """openai-whisper's fp32 encoder over the windows of ``samples``, sliced from the padded log-mel as transcribe() does."""
    mel = whisper.log_mel_spectrogram(samples, padding=whisper.audio.N_SAMPLES)

    def encode(seek, frames):
        with torch.no_grad():
            return model.encoder(whisper.pad_or_trim(mel[:, seek:seek + frames], 3000)[None]).numpy()

    return encode


def step_module_decoder(base_model, variant):
    """A Core ML decoder's host loop (stateful or cache-io, WhisperKit's dtypes and update order) driving the fp32
    step module the converted program is made from (which it matches within 35 dB: tests/test_decoder.py)."""
    predictor = TorchPredictor(build_decoder(f"decoder-{variant}", base_model.dims, base_model.state_dict, base_model.alignment_heads))
    return lambda features: decoder_steps(ArtifactKind.decoder(variant), predictor, channels_first(features).astype(np.float32), base_model.dims)


def segments_of(result) -> list[tuple]:
    return [(round(s["start"], 2), round(s["end"], 2), s["text"]) for s in result["segments"] if s["text"]]


def assert_monotonic(segments, duration):
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and all(s["start"] <= s["end"] <= duration + 0.01 for s in segments)
    assert all(a["end"] <= b["start"] + 0.01 for a, b in zip(segments, segments[1:]))


# ------------------------------------------------------------------------------------------------ long-form


def test_long_audio_through_whispercpps_encoder_and_the_host_decoder_is_openai_whispers_transcript(base_whispercpp, long_clip, openai_long):
    """`wconv transcribe --json` of 69 s: the converted encoder (fp16, evaluator) over three windows, then the host decoder."""
    result = invoke("transcribe", base_whispercpp[0], long_clip[0], "--json", "--language", "en")
    assert result.exit_code == 0, result.output
    transcript = json.loads(result.stdout)
    reference = openai_long["prompted"]
    assert transcript["language"] == "en" and transcript["decoder"] == "pytorch"
    assert word_error_rate(transcript["text"], reference["text"]) <= 0.02  # measured 0.0
    assert len(transcript["segments"]) >= 12 and transcript["segments"][-1]["end"] > 60
    assert_monotonic(transcript["segments"], len(long_clip[1]) / 16000)
    assert [segment["text"] for segment in transcript["segments"]] == [text for _, _, text in segments_of(reference)]


@pytest.mark.parametrize("variant, prompted", [("pytorch", False)])  # with the prompt: the CLI test above; Core ML decoders: test_decoder, test_whisperkit
def test_every_decoders_host_loop_gives_openai_whispers_segments_window_by_window(base_model, openai_base_model, long_clip,
                                                                                  openai_long, variant, prompted):
    """The long-form loop is one function for every target: fed openai-whisper's encoder, each decoder's host loop
    gives exactly transcribe()'s segments, with the previous text as prompt and without (the host decoder with the
    prompt: the test above)."""
    samples = long_clip[1]
    decoder = PyTorchDecoder(openai_base_model).steps if variant == "pytorch" else step_module_decoder(base_model, variant)
    result = transcribe_samples(samples, pytorch_encoder(openai_base_model, samples), decoder, base_model.dims, True, "en",
                                condition_on_previous_text=prompted)
    reference = openai_long["prompted" if prompted else "unprompted"]
    assert segments_of(result) == segments_of(reference)
    assert result["text"] == reference["text"].strip()
    assert not any(module._forward_hooks for module in openai_base_model.modules())  # the shared model is left as it was


def test_the_whisperkit_folder_transcribes_with_its_own_models_and_detects_the_language(base_whisperkit, speech_clips, openai_base_model):
    """`wconv transcribe` on the folder: MelSpectrogram -> AudioEncoder -> TextDecoder, timestamps and language from them.
    The window's audio is zero-padded to 30 s as WhisperKit pads it (openai-whisper pads the log-mel): the same text,
    segment times within 0.1 s (measured 0.08)."""
    clip = speech_clips[2]
    transcript = json.loads(invoke("transcribe", base_whisperkit[1], clip, "--json").stdout)
    reference = whisper.transcribe(openai_base_model, read_wav(clip), temperature=0, fp16=False)
    assert transcript["language"] == reference["language"] == "en" and transcript["decoder"].startswith("cache-io")
    assert word_error_rate(transcript["text"], reference["text"]) == 0
    assert [s["text"] for s in transcript["segments"]] == [s["text"] for s in reference["segments"]]
    times = [(s["start"], s["end"]) for s in transcript["segments"]]
    assert np.abs(np.array(times) - [(s["start"], s["end"]) for s in reference["segments"]]).max() <= 0.1, times


# ------------------------------------------------------------------------------------------------ language


def test_german_speech_is_detected_through_the_stateful_decoder_and_the_whisperkit_folder(german_clip, base_artifacts, base_whisperkit, ct2_base):
    samples, dims = read_wav(german_clip), ct2_base.dims
    tokenizer = get_tokenizer(dims, multilingual=True)
    encoder_path = base_artifacts["encoder"]
    encoder = Artifact.from_entry({"kind": "encoder", **describe_io(encoder_path)}, encoder_path)
    features = WindowEncoder(samples, encoder_path, encoder, None, dims.n_mels)(0, len(samples) // 160)
    stateful = decoder_steps(ArtifactKind.DECODER_STATEFUL, load_artifact(base_artifacts["stateful"]), channels_first(features), dims)
    language, probabilities = detect_language(stateful, tokenizer)
    assert language == "de" and probabilities["de"] > 0.5, sorted(probabilities.items(), key=lambda kv: -kv[1])[:3]

    folder = base_whisperkit[1]
    audio_encoder = Artifact.from_entry({"kind": "encoder", **describe_io(folder / "AudioEncoder.mlpackage")}, "AudioEncoder.mlpackage")
    features = WindowEncoder(samples, folder / "AudioEncoder.mlpackage", audio_encoder, folder / "MelSpectrogram.mlpackage", dims.n_mels)(0, 3000)
    text_decoder = decoder_steps(ArtifactKind.DECODER_CACHE_IO, load_artifact(folder / "TextDecoder.mlpackage"), channels_first(features), dims)
    assert detect_language(text_decoder, tokenizer)[0] == "de"


def test_the_detected_language_is_in_the_json_and_used(base_whispercpp, german_clip):
    transcript = json.loads(invoke("transcribe", base_whispercpp[0], german_clip, "--json").stdout)
    assert transcript["language"] == "de"
    assert "Morgen" in transcript["text"] and "Park" in transcript["text"]


@pytest.mark.parametrize("language", ["xx", "klingon"])
def test_an_unknown_language_is_refused_before_anything_loads(tmp_path, language):
    result = invoke("transcribe", tmp_path / "nothing-here", tmp_path / "missing.wav", "--language", language)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert f"--language {language} is not one of Whisper's languages" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ words


def test_word_timestamps_from_the_cache_io_decoders_alignment_heads_follow_openai_whisper(base_artifacts, openai_base_model, speech_clips, ct2_base):
    """The converted cache-io decoder (fp16, evaluator) aligns clip 2's words within 0.1 s of openai-whisper's
    word_timestamps=True (which reads the same heads' raw attention in fp32)."""
    clip = speech_clips[1]
    samples, dims = read_wav(clip), ct2_base.dims
    reference = whisper.transcribe(openai_base_model, samples, language="en", temperature=0, fp16=False, word_timestamps=True)
    encoder_path = base_artifacts["encoder"]
    encoder = Artifact.from_entry({"kind": "encoder", **describe_io(encoder_path)}, encoder_path)
    frames = len(samples) // 160
    features = WindowEncoder(samples, encoder_path, encoder, None, dims.n_mels)(0, frames)
    tokenizer = get_tokenizer(dims, True, "en")
    segments = [{"start": s["start"], "end": s["end"], "tokens": s["tokens"]} for s in reference["segments"]]
    step = decoder_steps(ArtifactKind.DECODER_CACHE_IO, load_artifact(base_artifacts["cache-io"]), channels_first(features), dims)
    add_words(segments, word_timings(step, tokenizer, segments, frames), tokenizer.eot, 0.0, 0.0)
    words = [word for segment in segments for word in segment["words"]]
    expected = [word for segment in reference["segments"] for word in segment["words"]]
    assert [w["word"] for w in words] == [w["word"] for w in expected]
    errors = [abs(w[edge] - e[edge]) for w, e in zip(words, expected) for edge in ("start", "end")]
    assert max(errors) <= 0.1, errors


def test_word_timestamps_need_a_cache_io_decoder(base_whispercpp, speech_clips):
    result = invoke("transcribe", base_whispercpp[0], speech_clips[0], "--word-timestamps")
    assert result.exit_code == 2 and "--word-timestamps needs a cache-io decoder" in result.output


# ------------------------------------------------------------------------------------------------ silence


@pytest.mark.parametrize("samples, why", [(np.zeros(0, np.float32), "empty"), (np.zeros(80000, np.float32), "silent")])
def test_empty_or_silent_audio_is_no_speech_and_refused_as_verify_input(base_whispercpp, sample_dir, tmp_path, samples, why):
    audio = tmp_path / f"{why}.wav"
    soundfile.write(audio, samples, 16000)
    result = invoke("transcribe", base_whispercpp[0], audio, "--json")
    assert result.exit_code == 0, result.output
    transcript = json.loads(result.stdout)
    assert transcript["text"] == "" and transcript["segments"] == [] and transcript["note"].startswith(f"no speech: the audio is {why}")
    assert invoke("transcribe", base_whispercpp[0], audio).output.startswith("no speech")
    refused = invoke("run", "--family", "ct2", sample_dir, "--output", tmp_path / "out", "--verify-input", audio)
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and f"is {why}" in refused.output
    assert not (tmp_path / "out").exists()


def test_window_split_follows_the_timestamp_tokens():
    """Two closed segments and an open one: seek to the last closed timestamp; a single timestamp at the end: the whole window."""
    tokenizer = get_tokenizer(whisper.model.ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6), True, "en")
    t = tokenizer.timestamp_begin
    segments, single, advance = split_segments([t, 440, t + 50, t + 50, 264, t + 120, t + 125, 1029], tokenizer, 30.0, 3000)
    assert [(s["start"], s["end"]) for s in segments] == [(30.0, 31.0), (31.0, 32.4)] and not single and advance == 240
    segments, single, advance = split_segments([t, 440, t + 50, t + 60], tokenizer, 0.0, 2500)  # a timestamp pair ends it
    assert single is False and advance == 100 and len(segments) == 1
    segments, single, advance = split_segments([t, 440, t + 50], tokenizer, 0.0, 2500)
    assert single and advance == 2500 and [(s["start"], s["end"]) for s in segments] == [(0.0, 1.0)]

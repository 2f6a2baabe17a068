"""Core's default verification: an ordinary plugin whose ``wconv_verify`` is ``trylast``.

Each artifact kind has its check: the saved model runs (Core ML on macOS, the reference evaluator
elsewhere) and is compared with the source model in fp32 — the log-mel with openai-whisper's, the
encoder with the family's reference encoder, a decoder's logits with openai-whisper's decoder, and
with a wav ``--verify-input`` a decoder's transcript through the converted models beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..hookspecs import hookimpl
from ..job import Artifact, ArtifactKind, Check, Job, LoadedModel
from ..layouts.contracts import AUDIO_ENCODER, MEL_SPECTROGRAM, N_FRAMES, TEXT_DECODER, decoder_text_context, encoder_filename
from ..runtime.audio import host_log_mel, is_audio_file, read_wav
from ..runtime.run import WindowEncoder, encoder_features, encoder_inputs, load_artifact, platform_methods, run_artifact
from .metrics import MAX_TOKEN_ERROR_RATE, compare, edit_distance, psnr_check
from .references import logit_tokens, reference_audio, reference_input

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@hookimpl(trylast=True)
def wconv_verify(path, model, artifact, job):
    check = CHECKS.get(artifact.kind)
    unknown = check is None or Path(path).suffix != ".mlpackage"  # a kind or format core does not run: the plugin that made it checks it
    if unknown or (artifact.kind is not ArtifactKind.MEL_SPECTROGRAM and model.reference_encoder is None):
        return None
    return check(Path(path), model, artifact, job)


def mel_spectrogram_checks(path: Path, model: LoadedModel, artifact: Artifact, job: Job) -> list[Check]:
    """The converted MelSpectrogram vs openai-whisper's ``log_mel_spectrogram`` of the samples it receives.

    Those are the audio cast to the model's input dtype (float32, as WhisperKit feeds it: unchanged; a
    package with fp16 audio rounds it); ``max_abs_error_vs_fp32_audio`` also reports the distance to the
    log-mel of the float32 audio, which such rounding alone sets.
    """
    import whisper

    samples, described = reference_audio(job.verify_input)
    n_mels = artifact.outputs[0]["shape"][1]
    received = samples.astype(NUMPY_DTYPES[artifact.inputs[0]["dtype"]]).astype(np.float32)
    checks = []
    for method in platform_methods(path):
        actual = run_artifact(path, {"audio": whisper.pad_or_trim(received)}, method)[0]["melspectrogram_features"][:, :, 0, :]
        metrics = compare(host_log_mel(received, n_mels), actual)
        metrics["max_abs_error_vs_fp32_audio"] = float(np.max(np.abs(host_log_mel(samples, n_mels) - actual)))
        what = (f"max abs {metrics['max_abs_error']:.2g} vs openai-whisper's log-mel of {described} as the model receives it "
                f"({artifact.inputs[0]['dtype']}; {metrics['max_abs_error_vs_fp32_audio']:.2g} vs the float32 samples)")
        checks.append(psnr_check(artifact, metrics, method, job, what))
    return checks


def reference_features(model: LoadedModel, job: Job):
    """The source model's fp32 encoder output for the verification input, and what that input was."""
    import torch

    mel, described = reference_input(model.dims.n_mels, N_FRAMES, job.verify_input)
    with torch.no_grad():
        return mel, model.reference_encoder(torch.from_numpy(mel)), described


def encoder_checks(path: Path, model: LoadedModel, artifact: Artifact, job: Job) -> list[Check]:
    """The saved encoder vs the family's fp32 reference encoder on the verification log-mel."""
    mel, features, described = reference_features(model, job)
    checks = []
    for method in platform_methods(path):
        outputs = run_artifact(path, encoder_inputs(artifact, mel), method)[0]
        metrics = compare(features.numpy(), encoder_features(artifact, outputs))
        checks.append(psnr_check(artifact, metrics, method, job, f"input: {described}"))
    return checks


def decoder_checks(path: Path, model: LoadedModel, artifact: Artifact, job: Job, encoder_path: Path | None = None) -> list[Check]:
    """The decoder's logits vs openai-whisper's fp32 decoder; with a wav ``--verify-input``, its transcript too
    (behind ``encoder_path``, by default the encoder beside it: see :func:`transcript_check`)."""
    from ..runtime.reference import whisper_model

    _, features, described = reference_features(model, job)
    reference_model = whisper_model(model.dims, model.state_dict, encoder=False)  # one fp32 decoder for both references
    tokens, reference = reference_decoder_logits(reference_model, model, features)
    transcript = (expected_transcript(model, reference_model, job.verify_input, decoder_text_context(artifact) // 2)
                  if is_audio_file(job.verify_input) else None)
    del reference_model  # freed before the converted decoder runs
    checks = []
    for method in platform_methods(path):
        metrics = compare(reference, artifact_decoder_logits(path, model, artifact, features, tokens, method))
        checks.append(psnr_check(artifact, metrics, method, job, f"logits of {len(tokens)} prompt and text tokens on {described}"))
        if transcript is not None:
            checks.append(transcript_check(path, model, artifact, job, method, transcript, encoder_path))
    return checks


CHECKS = {
    ArtifactKind.MEL_SPECTROGRAM: mel_spectrogram_checks,
    ArtifactKind.ENCODER: encoder_checks,
    ArtifactKind.DECODER_STATEFUL: decoder_checks,
    ArtifactKind.DECODER_CACHE_IO: decoder_checks,
}


def expected_transcript(model: LoadedModel, reference_model, audio: Path, sample_len: int) -> tuple[np.ndarray, list[int]]:
    """The samples of ``audio`` and the greedy English tokens of ``reference_model`` (openai-whisper fp32, source weights,
    unpatched) for them, at most ``sample_len`` of them: what a decoder of text context ``2 * sample_len`` can write."""
    import torch

    from ..runtime.reference import reference_tokens

    samples = read_wav(audio)
    with torch.no_grad():
        features = model.reference_encoder(torch.from_numpy(host_log_mel(samples, model.dims.n_mels))).numpy()
    return samples, reference_tokens(reference_model, features, "en", sample_len)


def transcript_check(path: Path, model: LoadedModel, artifact: Artifact, job: Job, method: str, transcript,
                     encoder_path: Path | None = None) -> Check:
    """The converted models transcribe ``--verify-input`` (greedy, English) as openai-whisper fp32 does.

    ``transcript`` is :func:`expected_transcript`'s. A WhisperKit TextDecoder runs behind the
    MelSpectrogram and AudioEncoder beside it (the chain WhisperKit runs); any other decoder behind
    ``encoder_path``, by default the converted ``ggml-<name>-encoder`` beside it.
    """
    from ..errors import InputError
    from ..manifest import describe_io
    from ..runtime.decoding import get_tokenizer, transcribe_tokens

    folder, samples, expected = path.parent, *transcript
    whisperkit = path.name == f"{TEXT_DECODER}.mlpackage"
    encoder_path = encoder_path or folder / (f"{AUDIO_ENCODER}.mlpackage" if whisperkit else encoder_filename(model.name))
    mel_path = folder / f"{MEL_SPECTROGRAM}.mlpackage" if whisperkit else None
    for needed in (encoder_path, mel_path):
        if needed is not None and not needed.is_dir():
            raise InputError(f"{needed} is missing: the transcript check of {path.name} runs the models beside it")
    encoder = Artifact.from_entry({"kind": ArtifactKind.ENCODER, **describe_io(encoder_path)}, encoder_path.name)
    features = WindowEncoder(samples, encoder_path, encoder, mel_path, model.dims.n_mels, method)(0, N_FRAMES)
    tokens = transcribe_tokens(features, path, artifact.kind, model.dims, model.multilingual, "en", method, decoder_text_context(artifact))
    rate = edit_distance(tokens, expected) / max(len(expected), 1)
    tokenizer = get_tokenizer(model.dims, model.multilingual)
    text, expected_text = tokenizer.decode(tokens).strip(), tokenizer.decode(expected).strip()
    passed = rate <= MAX_TOKEN_ERROR_RATE
    chain = f"{MEL_SPECTROGRAM} -> {AUDIO_ENCODER} -> {TEXT_DECODER}" if whisperkit else f"host log-mel -> {encoder_path.name} -> {path.name}"
    message = (f"transcript {text!r} vs openai-whisper fp32 {expected_text!r}: token error rate {rate:.2f} "
               f"(gate {MAX_TOKEN_ERROR_RATE:g}, {'pass' if passed else 'fail'}); {chain} on {Path(job.verify_input).name}")
    return Check(artifact=artifact.filename, passed=passed, method=method, message=message,
                 metrics={"token_error_rate": rate, "tokens": len(tokens)})


def reference_decoder_logits(reference_model, model: LoadedModel, features):
    """A prompt plus a few text tokens, and ``reference_model``'s logits for them (openai-whisper fp32, same weights)."""
    import torch

    tokens = logit_tokens(model)
    with torch.no_grad():
        return tokens, reference_model.decoder(torch.tensor([tokens]), features.float())[0].numpy()


def artifact_decoder_logits(path: Path, model: LoadedModel, artifact: Artifact, features, tokens: list[int], method: str):
    """The converted decoder's logits for ``tokens``, one step per token, run by ``method``."""
    from ..runtime.decoding import channels_first, decoder_steps

    step = decoder_steps(artifact.kind, load_artifact(path, method), channels_first(features.numpy()), model.dims, decoder_text_context(artifact))
    return np.stack([step(token, position) for position, token in enumerate(tokens)])

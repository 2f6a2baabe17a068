"""Core's default stage implementations: an ordinary plugin whose hooks are all ``trylast``.

trace: map the canonical weights onto the shared ANE modules and run ``torch.export``.
convert: ``ct.convert`` to an fp16 ML program with the artifact's IO contract.
postprocess: metadata and IO descriptions.
verify: run the saved artifact (Core ML on macOS, the reference evaluator elsewhere) against the
source model's fp32 encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import ane, decoder
from .artifacts import N_FRAMES, channels_first_encoder
from .hookspecs import hookimpl
from .job import Artifact, Check, Job, LoadedModel
from .verify import (compare, encoder_features, encoder_inputs, host_log_mel, is_audio_file, load_artifact, platform_methods,
                     read_wav, reference_audio, reference_input, run_artifact)

IO_DESCRIPTIONS = {
    "logmel_data": "log-mel spectrogram (1, n_mels, frames), float32, as whisper.cpp computes it",
    "output": "encoder hidden states (1, frames/2, n_state), float32",
    "audio": "30 s of 16 kHz mono samples in [-1, 1], zero-padded",
    "melspectrogram_features": "log-mel spectrogram (1, n_mels, 1, 3000), as openai-whisper's log_mel_spectrogram",
    "input_ids": "token id of this decoding step",
    "cache_length": "position of this token: the number of tokens decoded before it",
    "encoder_output_embeds": "encoder output (1, n_state, 1, 1500), fp16 (the encoder's (1, 1500, n_state) transposed)",
    "key_cache": "every layer's self-attention keys, concatenated on dim 1",
    "value_cache": "every layer's self-attention values, concatenated on dim 1",
    "kv_cache_update_mask": "one-hot: 1 at this token's position",
    "decoder_key_padding_mask": "additive: 0 at positions 0..cache_length, -1e4 after",
    "logits": "next-token logits",
    "key_cache_updates": "this token's keys, to write into key_cache at cache_length",
    "value_cache_updates": "this token's values, to write into value_cache at cache_length",
    "alignment_heads_weights": "cross-attention weights averaged over the alignment heads",
}
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32}


def build_module(model: LoadedModel, artifact: Artifact):
    """The fp32 ANE PyTorch module for an artifact kind, loaded with the model's weights."""
    if artifact.kind == "melspectrogram":
        return ane.LogMelSpectrogram(model.dims.n_mels).eval()
    if artifact.kind == "encoder":
        return ane.build_encoder(model.dims, model.state_dict, channels_first_output=channels_first_encoder(artifact))
    if artifact.kind.startswith("decoder-"):
        return decoder.build_decoder(artifact.kind, model.dims, model.state_dict, model.alignment_heads)
    raise NotImplementedError(f"no ANE module for artifact kind '{artifact.kind}'")


def example_inputs(artifact: Artifact) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in artifact.inputs:
        if spec["dtype"].startswith("int"):
            tensors.append(torch.zeros(spec["shape"], dtype=torch.int32))
        else:
            tensors.append(torch.randn(spec["shape"], generator=generator))
    return tuple(tensors)


def dynamic_shapes(artifact: Artifact):
    """torch.export dims for inputs with enumerated frame counts (None: everything static)."""
    from torch.export import Dim

    specs = [spec.get("enumerated_frames") for spec in artifact.inputs]
    if not any(specs):
        return None
    shapes = []
    for frames in specs:
        if frames:
            half = Dim("half_frames", min=min(frames) // 2, max=max(frames) // 2)
            shapes.append({2: 2 * half})
        else:
            shapes.append(None)
    return tuple(shapes)


@hookimpl(trylast=True)
def wconv_trace(model, artifact):
    import torch

    module = build_module(model, artifact)
    with torch.no_grad():
        exported = torch.export.export(module, example_inputs(artifact), dynamic_shapes=dynamic_shapes(artifact))
        return exported.run_decompositions({})


def tensor_type(spec: dict):
    import coremltools as ct

    dtype = NUMPY_DTYPES[spec["dtype"]]
    frames = spec.get("enumerated_frames")
    if frames:
        shapes = [tuple(spec["shape"][:-1]) + (n,) for n in frames]
        shape = ct.EnumeratedShapes(shapes=shapes, default=tuple(spec["shape"]))
    else:
        shape = tuple(spec["shape"])
    return ct.TensorType(name=spec["name"], shape=shape, dtype=dtype)


@hookimpl(trylast=True)
def wconv_convert(traced, artifact, job):
    import coremltools as ct

    target = max(getattr(ct.target, job.min_target), getattr(ct.target, artifact.options.get("min_target", job.min_target)))
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=spec["shape"], dtype=NUMPY_DTYPES[spec["dtype"]]), name=spec["name"])
              for spec in artifact.options.get("states", [])]
    return ct.convert(
        traced,
        convert_to="mlprogram",
        inputs=[tensor_type(spec) for spec in artifact.inputs],
        outputs=[ct.TensorType(name=spec["name"], dtype=np.float32 if spec["dtype"] == "float32" else np.float16)
                 for spec in artifact.outputs],
        states=states or None,
        compute_precision=getattr(ct.precision, artifact.options.get("compute_precision", "float16").upper()),
        minimum_deployment_target=target,
        skip_model_load=True,
    )


@hookimpl(trylast=True)
def wconv_postprocess(mlmodel, model, artifact, job):
    from .manifest import package_version

    mlmodel.author = "wconv"
    precision = "fp32 compute, fp16 IO" if artifact.options.get("compute_precision") == "float32" else "ANE-optimized, fp16"
    mlmodel.short_description = f"Whisper {model.name} {artifact.kind} ({precision}), converted by wconv from {model.family}:{job.source}"
    mlmodel.version = package_version("wconv") or ""
    mlmodel.user_defined_metadata.update({
        "wconv.family": model.family,
        "wconv.source": job.source,
        "wconv.checkpoint_sha256": model.source_sha256,
        "wconv.dims": json.dumps(model.dims.__dict__),
    })
    for spec in artifact.inputs:
        if spec["name"] in IO_DESCRIPTIONS:
            mlmodel.input_description[spec["name"]] = IO_DESCRIPTIONS[spec["name"]]
    for spec in artifact.outputs:
        if spec["name"] in IO_DESCRIPTIONS:
            mlmodel.output_description[spec["name"]] = IO_DESCRIPTIONS[spec["name"]]


@hookimpl(trylast=True)
def wconv_verify(path, model, artifact, job):
    if artifact.kind == "melspectrogram":
        return [mel_spectrogram_check(path, artifact, job, method) for method in platform_methods()]
    if model.reference_encoder is None or not (artifact.kind == "encoder" or artifact.kind.startswith("decoder-")):
        return None
    import torch

    mel, described = reference_input(model.dims.n_mels, N_FRAMES, job.verify_input)
    with torch.no_grad():
        features = model.reference_encoder(torch.from_numpy(mel))
    if artifact.kind.startswith("decoder-"):
        tokens, reference = reference_decoder_logits(model, features)
    transcript = expected_transcript(model, job.verify_input) if artifact.kind.startswith("decoder-") and is_audio_file(job.verify_input) else None
    checks = []
    for method in platform_methods():
        if artifact.kind == "encoder":
            outputs = run_artifact(path, encoder_inputs(artifact, mel), method)[0]
            metrics = compare(features.numpy(), encoder_features(artifact, outputs))
            checks.append(psnr_check(artifact, metrics, method, job, f"input: {described}"))
        else:
            metrics = compare(reference, artifact_decoder_logits(path, model, artifact, features, tokens, method))
            checks.append(psnr_check(artifact, metrics, method, job, f"logits of {len(tokens)} prompt and text tokens on {described}"))
            if transcript is not None:
                checks.append(transcript_check(path, model, artifact, job, method, transcript))
    return checks


def psnr_check(artifact: Artifact, metrics: dict, method: str, job: Job, what: str) -> Check:
    passed = metrics["psnr"] >= job.min_psnr
    message = f"PSNR {metrics['psnr']:.1f} dB vs gate {job.min_psnr:g} dB ({'pass' if passed else 'fail'}); {what}"
    return Check(artifact=artifact.filename, passed=passed, metrics=metrics, method=method, message=message)


def mel_spectrogram_check(path, artifact: Artifact, job: Job, method: str) -> Check:
    """The converted MelSpectrogram vs openai-whisper's ``log_mel_spectrogram`` of the samples it receives.

    Those are the audio rounded to the model's fp16 input; ``max_abs_error_vs_fp32_audio`` also
    reports the distance to the log-mel of the unrounded audio, which that rounding alone sets.
    """
    samples, described = reference_audio(job.verify_input)
    n_mels = artifact.outputs[0]["shape"][1]
    received = samples.astype(NUMPY_DTYPES[artifact.inputs[0]["dtype"]]).astype(np.float32)
    import whisper

    actual = run_artifact(path, {"audio": whisper.pad_or_trim(received)}, method)[0]["melspectrogram_features"][:, :, 0, :]
    metrics = compare(host_log_mel(received, n_mels), actual)
    metrics["max_abs_error_vs_fp32_audio"] = float(np.max(np.abs(host_log_mel(samples, n_mels) - actual)))
    what = (f"max abs {metrics['max_abs_error']:.2g} vs openai-whisper's log-mel of {described} as the model receives it "
            f"({artifact.inputs[0]['dtype']}; {metrics['max_abs_error_vs_fp32_audio']:.2g} vs the float32 samples)")
    return psnr_check(artifact, metrics, method, job, what)


MAX_TOKEN_ERROR_RATE = 0.1  # the transcript check's gate


def expected_transcript(model: LoadedModel, audio: Path) -> tuple[np.ndarray, list[int]]:
    """The samples of ``audio`` and openai-whisper fp32's greedy English tokens for them (source weights, unpatched)."""
    import torch

    from .reference import whisper_model
    from .transcribe import reference_tokens

    samples = read_wav(audio)
    with torch.no_grad():
        features = model.reference_encoder(torch.from_numpy(host_log_mel(samples, model.dims.n_mels))).numpy()
    return samples, reference_tokens(whisper_model(model.dims, model.state_dict), features, "en")


def transcript_check(path, model: LoadedModel, artifact: Artifact, job: Job, method: str, transcript) -> Check:
    """The converted models transcribe ``--verify-input`` (greedy, English) as openai-whisper fp32 does.

    ``transcript`` is :func:`expected_transcript`'s. A WhisperKit TextDecoder runs behind the
    MelSpectrogram and AudioEncoder beside it (the chain WhisperKit runs); any other decoder behind
    the converted ``ggml-<name>-encoder`` beside it.
    """
    from .artifacts import AUDIO_ENCODER, MEL_SPECTROGRAM, TEXT_DECODER, encoder_filename
    from .decoding import get_tokenizer, transcribe_tokens
    from .errors import InputError
    from .manifest import describe_io
    from .transcribe import encode_samples

    folder, samples, expected = Path(path).parent, *transcript
    whisperkit = Path(path).name == f"{TEXT_DECODER}.mlpackage"
    encoder_path = folder / (f"{AUDIO_ENCODER}.mlpackage" if whisperkit else encoder_filename(model.name))
    mel_path = folder / f"{MEL_SPECTROGRAM}.mlpackage" if whisperkit else None
    for needed in (encoder_path, mel_path):
        if needed is not None and not needed.is_dir():
            raise InputError(f"{needed} is missing: the transcript check of {Path(path).name} runs the models beside it")
    features, _ = encode_samples(samples, (encoder_path, describe_io(encoder_path)), mel_path, model.dims.n_mels, method)
    tokens = transcribe_tokens(features, path, artifact.kind.removeprefix("decoder-"), model.dims, model.multilingual, "en", method)
    rate = edit_distance(tokens, expected) / max(len(expected), 1)
    tokenizer = get_tokenizer(model.dims, model.multilingual)
    text, expected_text = tokenizer.decode(tokens).strip(), tokenizer.decode(expected).strip()
    passed = rate <= MAX_TOKEN_ERROR_RATE
    chain = f"{MEL_SPECTROGRAM} -> {AUDIO_ENCODER} -> {TEXT_DECODER}" if whisperkit else f"host log-mel -> {encoder_path.name} -> {Path(path).name}"
    message = (f"transcript {text!r} vs openai-whisper fp32 {expected_text!r}: token error rate {rate:.2f} "
               f"(gate {MAX_TOKEN_ERROR_RATE:g}, {'pass' if passed else 'fail'}); {chain} on {Path(job.verify_input).name}")
    return Check(artifact=artifact.filename, passed=passed, method=method, message=message,
                 metrics={"token_error_rate": rate, "tokens": len(tokens)})


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two token lists."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def reference_decoder_logits(model, features):
    """A prompt plus a few text tokens, and openai-whisper's fp32 decoder logits (same weights) for them."""
    import torch

    from .decoding import get_tokenizer
    from .reference import whisper_model

    tokenizer = get_tokenizer(model.dims, model.multilingual)
    tokens = list(tokenizer.sot_sequence_including_notimestamps) + tokenizer.encode(" The quick brown fox")
    reference_model = whisper_model(model.dims, model.state_dict)
    with torch.no_grad():
        return tokens, reference_model.decoder(torch.tensor([tokens]), features.float())[0].numpy()


def artifact_decoder_logits(path, model, artifact, features, tokens, method):
    """The converted decoder's logits for ``tokens``, one step per token, run by ``method``."""
    from .decoding import channels_first, decoder_steps

    variant = artifact.kind.removeprefix("decoder-")
    step = decoder_steps(variant, load_artifact(path, method), channels_first(features.numpy()), model.dims)
    return np.stack([step(token, position) for position, token in enumerate(tokens)])

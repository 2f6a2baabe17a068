"""Core's default stage implementations: an ordinary plugin whose hooks are all ``trylast``.

trace: map the canonical weights onto the shared ANE modules and run ``torch.export``.
convert: ``ct.convert`` to an fp16 ML program with the artifact's IO contract.
postprocess: metadata and IO descriptions.
verify: run the saved artifact (Core ML on macOS, the reference evaluator elsewhere) against the
source model's fp32 encoder.
"""

from __future__ import annotations

import json

import numpy as np

from . import ane, decoder
from .artifacts import N_FRAMES
from .hookspecs import hookimpl
from .job import Artifact, Check, Job, LoadedModel
from .verify import compare, load_artifact, platform_methods, reference_input, run_artifact

IO_DESCRIPTIONS = {
    "logmel_data": "log-mel spectrogram (1, n_mels, frames), float32, as whisper.cpp computes it",
    "output": "encoder hidden states (1, frames/2, n_state), float32",
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
    if artifact.kind == "encoder":
        return ane.build_encoder(model.dims, model.state_dict)
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
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=target,
        skip_model_load=True,
    )


@hookimpl(trylast=True)
def wconv_postprocess(mlmodel, model, artifact, job):
    from .manifest import package_version

    mlmodel.author = "wconv"
    mlmodel.short_description = f"Whisper {model.name} {artifact.kind} (ANE-optimized, fp16), converted by wconv from {model.family}:{job.source}"
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
    if model.reference_encoder is None or not (artifact.kind == "encoder" or artifact.kind.startswith("decoder-")):
        return None
    import torch

    mel, described = reference_input(model.dims.n_mels, N_FRAMES, job.verify_input)
    with torch.no_grad():
        features = model.reference_encoder(torch.from_numpy(mel))
    if artifact.kind.startswith("decoder-"):
        tokens, reference = reference_decoder_logits(model, features)
    checks = []
    for method in platform_methods():
        if artifact.kind == "encoder":
            actual = run_artifact(path, {"logmel_data": mel}, method)[0]["output"]
            metrics = compare(features.numpy(), actual)
            what = f"input: {described}"
        else:
            metrics = compare(reference, artifact_decoder_logits(path, model, artifact, features, tokens, method))
            what = f"logits of {len(tokens)} prompt and text tokens on {described}"
        passed = metrics["psnr"] >= job.min_psnr
        message = f"PSNR {metrics['psnr']:.1f} dB vs gate {job.min_psnr:g} dB ({'pass' if passed else 'fail'}); {what}"
        checks.append(Check(artifact=artifact.filename, passed=passed, metrics=metrics, method=method, message=message))
    return checks


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

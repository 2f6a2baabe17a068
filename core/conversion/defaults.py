"""Core's default conversion stages: an ordinary plugin whose hooks are all ``trylast``.

trace: map the canonical weights onto the shared ANE modules and run ``torch.export``.
convert: ``ct.convert`` to an fp16 ML program with the artifact's IO contract.
postprocess: metadata and IO descriptions.
"""

from __future__ import annotations

import json

import numpy as np

from ..hookspecs import hookimpl
from ..job import Artifact, ArtifactKind, Job, LoadedModel, target_rank
from . import ane, steps

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

# Passes of coremltools' default MIL pipeline that change nothing in wconv's encoder programs (measured
# pass by pass with coremltools 9.0 on the fp16-traced encoders of whisper.cpp, of WhisperKit and with
# enumerated lengths; update_output_dtypes and cast_optimization do change one of them). Each pass costs its time
# and a validation of the whole program after it; without them the encoder converts into the same bytes
# (tests/test_lean_conversion.py compares the saved packages of both layouts and of enumerated lengths).
IDLE_ENCODER_PASSES = tuple(f"common::{name}" for name in (
    "add_conv_transpose_output_shape", "add_int16_cast", "canonicalize_inplace_pattern",
    "canonicalize_quantized_lut_pattern", "compose_conv1d", "concat_to_pixel_shuffle",
    "dequantize_quantize_pair_elimination", "dequantize_to_constexpr", "detect_concat_interleave",
    "distributive_quantized_binary_op_scale_normalization", "divide_to_multiply", "expand_dynamic_linear",
    "expand_high_rank_reshape_and_transpose", "fuse_conv_batchnorm", "fuse_conv_bias", "fuse_dilated_conv",
    "fuse_elementwise_to_batchnorm", "fuse_gelu_exact", "fuse_gelu_tanh_approximation", "fuse_leaky_relu",
    "fuse_linear_bias", "fuse_matmul_weight_bias", "fuse_onehot_matmul_to_gather", "fuse_pad_conv",
    "fuse_prelu", "fuse_reduce_mean", "fuse_squeeze_expand_dims", "fuse_stack_split", "fuse_transpose_matmul",
    "guard_negative_gather_indices", "image_input_preprocess", "int_op_canonicalization",
    "loop_invariant_elimination", "lower_complex_dialect_ops", "merge_affine_dequantize_with_consecutive_ops",
    "merge_consecutive_paddings", "merge_consecutive_relus", "merge_consecutive_reshapes",
    "merge_consecutive_transposes", "noop_elimination", "nullify_redundant_quantization_zero_point",
    "prefer_state_in_downstream", "prelu_to_lrelu", "rank0_expand_dims_swap", "reduce_transposes",
    "remove_redundant_ops", "remove_symbolic_reshape", "replace_stack_reshape", "sanitize_input_output_names",
    "select_optimization", "use_reflection_padding"
))


MODULE_BUILDERS = {
    ArtifactKind.MEL_SPECTROGRAM: lambda model, artifact, dtype: ane.LogMelSpectrogram(model.dims.n_mels).to(dtype).eval(),
    ArtifactKind.ENCODER: lambda model, artifact, dtype: ane.build_encoder(model.dims, model.state_dict, artifact.channels_first, dtype),
    **{kind: lambda model, artifact, dtype: steps.build_decoder(artifact.kind, model.dims, model.state_dict, model.alignment_heads,
                                                                 artifact.options.get("text_context"), dtype)
       for kind in steps.STEP_MODULES},
}


def build_module(model: LoadedModel, artifact: Artifact, dtype=None):
    """The ANE PyTorch module for an artifact kind with the model's weights, in ``dtype`` (default fp32)."""
    import torch

    return MODULE_BUILDERS[artifact.kind](model, artifact, dtype or torch.float32)


# Kinds traced in fp16 when they compute in fp16. The stateful decoder is not: coremltools 9's torch frontend reads
# its fp16 states into fp32 (it expects fp32 torch buffers) and the attention then mixes fp32 and fp16 operands.
FP16_TRACED = (ArtifactKind.ENCODER, ArtifactKind.DECODER_CACHE_IO)


def traced_dtype(artifact: Artifact):
    """The dtype an artifact's module is exported in for Core ML: fp16 for :data:`FP16_TRACED` kinds computing in fp16.

    coremltools then converts weights that are fp16 already (no fp32 copy of them, no fp16 cast
    pass) into the same program; the other kinds are traced in fp32 and cast by coremltools.
    """
    import torch

    fp16 = artifact.kind in FP16_TRACED and artifact.options.get("compute_precision", "float16") == "float16"
    return torch.float16 if fp16 else torch.float32


def has_fp32_weights(exported) -> bool:
    """Whether an exported program holds fp32 tensors (for coremltools' fp16 cast pass)."""
    import torch

    tensors = [*exported.state_dict.values(), *exported.constants.values()]
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors)


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

    if not any(spec.get("enumerated_frames") for spec in artifact.inputs):
        return None
    shapes = []
    for spec in artifact.inputs:
        if frames := spec.get("enumerated_frames"):
            half = Dim("half_frames", min=min(frames) // 2, max=max(frames) // 2)
            shapes.append({len(spec["shape"]) - 1: 2 * half})  # frames are the last axis in either layout
        else:
            shapes.append(None)
    return tuple(shapes)


@hookimpl(trylast=True)
def wconv_trace(model, artifact):
    import torch

    module = build_module(model, artifact, traced_dtype(artifact))
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


def artifact_target(artifact: Artifact, job: Job) -> str:
    """The deployment target an artifact is converted for: the job's, raised to what the artifact needs."""
    return max(job.min_target, artifact.options.get("min_target", job.min_target), key=target_rank)


@hookimpl(trylast=True)
def wconv_convert(traced, artifact, job):
    import coremltools as ct

    target = getattr(ct.target, artifact_target(artifact, job))
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=spec["shape"], dtype=NUMPY_DTYPES[spec["dtype"]]), name=spec["name"])
              for spec in artifact.options.get("states", [])]
    compute_precision = artifact.options.get("compute_precision", "float16") if has_fp32_weights(traced) else "float32"  # fp16 already
    return ct.convert(
        traced,
        convert_to="mlprogram",
        inputs=[tensor_type(spec) for spec in artifact.inputs],
        outputs=[ct.TensorType(name=spec["name"], dtype=np.float32 if spec["dtype"] == "float32" else np.float16)
                 for spec in artifact.outputs],
        states=states or None,
        compute_precision=getattr(ct.precision, compute_precision.upper()),
        minimum_deployment_target=target,
        pass_pipeline=encoder_pass_pipeline() if artifact.kind is ArtifactKind.ENCODER else None,
        skip_model_load=True,
    )


def encoder_pass_pipeline():
    """coremltools' default pass pipeline without :data:`IDLE_ENCODER_PASSES`."""
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(IDLE_ENCODER_PASSES)
    return pipeline


@hookimpl(trylast=True)
def wconv_postprocess(mlmodel, model, artifact, job):
    from ..manifest import package_version

    mlmodel.author = "wconv"
    precision = "fp32 compute, fp16 output" if artifact.options.get("compute_precision") == "float32" else "ANE-optimized, fp16"
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

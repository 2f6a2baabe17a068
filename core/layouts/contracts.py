"""The IO contracts of the Core ML artifacts the layouts are made of: names, shapes, dtypes, file names.

* ``ggml-<name>-encoder.mlpackage`` (``-flex`` with enumerated lengths): whisper.cpp finds its
  encoder by this name beside ``ggml-<name>.bin``; pure Core ML hosts use it too;
* ``<name>-decoder-stateful.mlpackage`` and ``<name>-decoder-cache-io.mlpackage`` (``--decoder``):
  pure Core ML text decoders, which no whisper.cpp build loads, hence no ``ggml-`` prefix;
* WhisperKit's ``MelSpectrogram``, ``AudioEncoder`` and ``TextDecoder.mlpackage``, the names
  WhisperKit looks for in its model folder.
"""

from __future__ import annotations

from ..job import Artifact, ArtifactKind, LoadedModel

N_FRAMES = 3000  # 30 s of audio at whisper's 10 ms hop
N_SAMPLES = 480000  # 30 s of 16 kHz audio
MEL_SPECTROGRAM, AUDIO_ENCODER, TEXT_DECODER = "MelSpectrogram", "AudioEncoder", "TextDecoder"  # WhisperKit's model names
FP16_INPUTS_TARGET = "iOS16"  # Core ML takes fp16 inputs from iOS 16 / macOS 13: models with them need at least that
MASKED = -1e4  # additive attention mask of a position not to attend to (WhisperKit's value; fp16-safe)


def encoder_filename(name: str, suffix: str = "") -> str:
    """whisper.cpp looks for ``ggml-<model>-encoder.mlmodelc`` beside ``ggml-<model>.bin``."""
    return f"ggml-{name}-encoder{suffix}.mlpackage"


def whispercpp_encoder(model: LoadedModel, frames: tuple[int, ...] = (N_FRAMES,)) -> Artifact:
    """The encoder whisper.cpp's Core ML build loads: float32 ``logmel_data`` in, float32 ``output`` out.

    whisper.cpp wraps a float32 buffer for the input and memcpy's the output as float32, so the IO
    stays float32 while everything inside computes in fp16. More than one frame count gives an
    encoder with ``ct.EnumeratedShapes`` (``-flex`` suffix); the largest count is the default.
    """
    dims = model.dims
    flexible = len(frames) > 1
    return Artifact(
        kind=ArtifactKind.ENCODER,
        filename=encoder_filename(model.name, "-flex" if flexible else ""),
        inputs=[{"name": "logmel_data", "shape": [1, dims.n_mels, max(frames)], "dtype": "float32",
                 "enumerated_frames": sorted(frames) if flexible else None}],
        outputs=[{"name": "output", "shape": [1, max(frames) // 2, dims.n_audio_state], "dtype": "float32"}],
    )


def length_function(frames: int) -> str:
    """The function of a Core AI encoder with enumerated lengths that takes ``frames`` (the others' is ``main``)."""
    return f"main_frames_{frames}"


def decoder_filename(name: str, variant: str) -> str:
    return f"{name}-decoder-{variant}.mlpackage"


def kv_state_name(kind: str, layer: int) -> str:
    """The stateful decoder's state (and PyTorch buffer) holding one layer's self-attention ``key``s or ``value``s."""
    return f"{kind}_cache_{layer}"


def token_inputs() -> list[dict]:
    """The token id and its position, as WhisperKit names them."""
    return [{"name": "input_ids", "shape": [1], "dtype": "int32"},
            {"name": "cache_length", "shape": [1], "dtype": "int32"}]


def encoder_output_input(model: LoadedModel) -> dict:
    """The encoder output in ANE layout ``(1, D, 1, n_audio_ctx)``; a host transposes whisper.cpp's ``(1, n_audio_ctx, D)``."""
    dims = model.dims
    return {"name": "encoder_output_embeds", "shape": [1, dims.n_audio_state, 1, dims.n_audio_ctx], "dtype": "float16"}


def logits_output(model: LoadedModel) -> dict:
    return {"name": "logits", "shape": [1, 1, model.dims.n_vocab], "dtype": "float16"}


def stateful_decoder(model: LoadedModel, filename: str | None = None, text_context: int | None = None) -> Artifact:
    """One decoding step whose self-attention keys and values stay in Core ML states (``MLState``, iOS 18).

    Per token only the token id, its position and the encoder output go in and the logits come
    out; each layer's keys and values are fp16 states ``(1, D, 1, text_context)`` written in the
    graph (``text_context`` defaults to the model's ``n_text_ctx``, 448).
    """
    dims = model.dims
    cache_shape = [1, dims.n_text_state, 1, text_context or dims.n_text_ctx]
    states = [{"name": kv_state_name(kind, layer), "shape": cache_shape, "dtype": "float16"}
              for layer in range(dims.n_text_layer) for kind in ("key", "value")]
    return Artifact(
        kind=ArtifactKind.DECODER_STATEFUL,
        filename=filename or decoder_filename(model.name, "stateful"),
        inputs=token_inputs() + [encoder_output_input(model)],
        outputs=[logits_output(model)],
        options={"min_target": "iOS18", "states": states, "text_context": cache_shape[-1]},
    )


def cache_io_decoder(model: LoadedModel, filename: str | None = None, text_context: int | None = None) -> Artifact:
    """WhisperKit's TextDecoder contract (iOS 16): the host keeps the self-attention cache.

    ``key_cache``/``value_cache`` ``(1, D*L, 1, text_context)`` go in with the one-hot
    ``kv_cache_update_mask`` (the step's position; int32, as WhisperKit allocates it) and the
    additive ``decoder_key_padding_mask`` (0 attend, -1e4 not); the step's keys and values come out
    as ``(1, D*L, 1, 1)`` slices for the host to write at that position. ``alignment_heads_weights``
    (mean cross-attention over the model's alignment heads) is there when the model has alignment
    heads. ``text_context`` defaults to the model's ``n_text_ctx`` (448, whisperkittools' default).
    """
    dims = model.dims
    context = text_context or dims.n_text_ctx
    cache_width = dims.n_text_state * dims.n_text_layer
    cache = {"shape": [1, cache_width, 1, context], "dtype": "float16"}
    slice_ = {"shape": [1, cache_width, 1, 1], "dtype": "float16"}
    outputs = [logits_output(model), {"name": "key_cache_updates", **slice_}, {"name": "value_cache_updates", **slice_}]
    if model.alignment_heads:
        outputs.append({"name": "alignment_heads_weights", "shape": [1, dims.n_audio_ctx], "dtype": "float16"})
    return Artifact(
        kind=ArtifactKind.DECODER_CACHE_IO,
        filename=filename or decoder_filename(model.name, "cache-io"),
        inputs=token_inputs() + [
            {"name": "key_cache", **cache},
            {"name": "value_cache", **cache},
            {"name": "kv_cache_update_mask", "shape": [1, context], "dtype": "int32"},
            encoder_output_input(model),
            {"name": "decoder_key_padding_mask", "shape": [1, context], "dtype": "float16"},
        ],
        outputs=outputs,
        options={"min_target": FP16_INPUTS_TARGET, "text_context": context},
    )


def decoder_text_context(decoder: Artifact) -> int:
    """The self-attention cache length of a decoder artifact (``--text-context``), from its cache input or state."""
    caches = [spec for spec in (*decoder.inputs, *decoder.options.get("states", ())) if spec["name"] in ("key_cache", kv_state_name("key", 0))]
    return caches[0]["shape"][-1]


DECODERS = {ArtifactKind.DECODER_STATEFUL: stateful_decoder, ArtifactKind.DECODER_CACHE_IO: cache_io_decoder}


def mel_spectrogram(model: LoadedModel) -> Artifact:
    """WhisperKit's MelSpectrogram: float32 ``audio (480000,)`` -> fp16 ``melspectrogram_features (1, n_mels, 1, 3000)``.

    WhisperKit feeds the samples as Float32 (fp16 samples alone would move the log-mel by ~0.05).
    It computes in fp32: the log-mel keeps 8 decades of power below the loudest bin, more than
    fp16 holds (fp16 compute is 0.05 off openai-whisper on speech, fp32 5e-4). WhisperKit runs it
    on the GPU, where fp32 is native.
    """
    return Artifact(
        kind=ArtifactKind.MEL_SPECTROGRAM,
        filename=f"{MEL_SPECTROGRAM}.mlpackage",
        inputs=[{"name": "audio", "shape": [N_SAMPLES], "dtype": "float32"}],
        outputs=[{"name": "melspectrogram_features", "shape": [1, model.dims.n_mels, 1, N_FRAMES], "dtype": "float16"}],
        options={"compute_precision": "float32", "min_target": FP16_INPUTS_TARGET},
    )


def whisperkit_encoder(model: LoadedModel) -> Artifact:
    """WhisperKit's AudioEncoder: fp16 ``melspectrogram_features (1, n_mels, 1, 3000)`` -> ``encoder_output_embeds``."""
    dims = model.dims
    return Artifact(
        kind=ArtifactKind.ENCODER,
        filename=f"{AUDIO_ENCODER}.mlpackage",
        inputs=[{"name": "melspectrogram_features", "shape": [1, dims.n_mels, 1, N_FRAMES], "dtype": "float16"}],
        outputs=[encoder_output_input(model)],
        options={"min_target": FP16_INPUTS_TARGET},
    )

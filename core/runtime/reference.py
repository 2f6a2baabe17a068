"""openai-whisper PyTorch models built from canonical weights: the fp32 reference for verification
and the host-side decoder for ``wconv transcribe`` when no Core ML decoder was converted."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError

# The smallest dims openai-whisper builds a Whisper of: the shell whisper_model puts the real parts in.
SHELL_DIMS = dict(n_mels=1, n_audio_ctx=1, n_audio_state=2, n_audio_head=1, n_audio_layer=0,
                  n_vocab=1, n_text_ctx=1, n_text_state=2, n_text_head=1, n_text_layer=0)


def whisper_model(dims, state_dict: dict, alignment_heads: list | None = None, encoder: bool = True):
    """An fp32 ``whisper.model.Whisper`` loaded strictly from a canonical state dict.

    Its encoder and decoder are built on the meta device and given the fp32 tensors themselves (``assign``):
    the weights exist once, not also as openai-whisper's random initialisation (large-v3: 6.2 GB, not 12.4 GB).
    ``encoder=False`` leaves the encoder out (2.5 GB for large-v3) for decoding given encoder output.
    """
    import torch
    import whisper.model

    model = whisper.model.Whisper(whisper.model.ModelDimensions(**SHELL_DIMS))  # a shell for the real parts
    model.dims, parts = dims, meta_parts(dims)
    model.encoder, model.decoder = parts["encoder"], parts["decoder"]
    if not encoder:
        del model.encoder
    weights = {k: torch.as_tensor(v).float() for k, v in state_dict.items()
               if k != "alignment_heads" and (encoder or not k.startswith("encoder."))}
    model.load_state_dict(weights, strict=True, assign=True)
    # The buffers no state dict holds, made as openai-whisper makes them: the decoder's causal mask, the alignment heads.
    model.decoder.register_buffer("mask", torch.full((dims.n_text_ctx, dims.n_text_ctx), -np.inf).triu_(1), persistent=False)
    heads = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    if alignment_heads:
        for layer, head in alignment_heads:
            heads[layer, head] = True
    else:
        heads[dims.n_text_layer // 2:] = True
    model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    if left := [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]:
        raise RuntimeError(f"openai-whisper's model has tensors no state dict gives: {', '.join(left)}")
    return model.eval()


def meta_parts(dims) -> dict:
    """openai-whisper's AudioEncoder and TextDecoder of ``dims`` on the meta device: shapes only, nothing allocated."""
    import torch
    import whisper.model

    with torch.device("meta"):
        return {"encoder": whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer),
                "decoder": whisper.model.TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)}


def check_weights(dims, state_dict: dict, source: str) -> None:
    """Refuse (an InputError naming ``source``) dims openai-whisper cannot build and weights that are not those dims'."""
    sizes = dataclasses.asdict(dims)
    problems = [f"{name} {value!r}" for name, value in sizes.items() if type(value) is not int or not 0 < value < 2**31]
    layers = {side: {name.split(".")[2] for name in state_dict if name.startswith(f"{side}.blocks.")} for side in ("encoder", "decoder")}
    if not problems:
        problems = [f"{side} width {sizes[f'n_{part}_state']} for {sizes[f'n_{part}_head']} heads"
                    for side, part in (("encoder", "audio"), ("decoder", "text"))
                    if sizes[f"n_{part}_state"] % sizes[f"n_{part}_head"] or sizes[f"n_{part}_state"] % 2]
        problems += [f"{len(layers[side])} {side} layers, not {sizes[f'n_{part}_layer']}"
                     for side, part in (("encoder", "audio"), ("decoder", "text")) if len(layers[side]) != sizes[f"n_{part}_layer"]]
    if not problems:
        expected = {f"{part}.{name}": tuple(tensor.shape) for part, module in meta_parts(dims).items()
                    for name, tensor in module.state_dict().items()}
        problems = [f"no {name}" for name in expected if name not in state_dict]
        problems += [f"{name} of shape {tuple(state_dict[name].shape)}, not {shape}"
                     for name, shape in expected.items() if name in state_dict and tuple(state_dict[name].shape) != shape]
    if problems:
        raise InputError(f"{source} is not a Whisper model of consistent dimensions ({', '.join(problems[:2])}): "
                         "re-download or re-convert it")


class LazyEncoder:
    """openai-whisper's own AudioEncoder in fp32, run one block at a time.

    Built on each call from the weights as stored (fp16 for official checkpoints): each
    ``ResidualAttentionBlock`` gets fp32 copies of its weights just before it runs and drops them
    after, so the fp32 weights of the whole encoder are never resident together (2.5 GB for
    large-v3). The result equals the whole fp32 encoder's bit for bit.
    """

    def __init__(self, dims, state_dict: dict):
        self.dims = dims
        self.state_dict = state_dict

    def __call__(self, mel):
        import torch
        import whisper.model

        d = self.dims
        with torch.device("meta"):
            encoder = whisper.model.AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, 0)
        weights = self.encoder_weights()
        encoder.load_state_dict(float_copies({k: v for k, v in weights.items() if not k.startswith("blocks.")}), strict=True, assign=True)
        del encoder.blocks  # a plain list of callables in place of the module list: forward only iterates it
        encoder.blocks = [BlockOnDemand(d, weights, i) for i in range(d.n_audio_layer)]
        with torch.no_grad():
            return encoder.eval()(mel.float())

    def encoder_weights(self) -> dict:
        prefix = "encoder."
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


class BlockOnDemand:
    """Block ``index`` of openai-whisper's encoder, built in fp32 from ``weights`` when called and freed after."""

    def __init__(self, dims, weights: dict, index: int):
        prefix = f"blocks.{index}."
        self.dims = dims
        self.weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}

    def __call__(self, x):
        import torch
        import whisper.model

        with torch.device("meta"):
            block = whisper.model.ResidualAttentionBlock(self.dims.n_audio_state, self.dims.n_audio_head)
        block.load_state_dict(float_copies(self.weights), strict=True, assign=True)
        return block.eval()(x)


def float_copies(weights: dict) -> dict:
    """fp32 versions of the tensors (the same tensor when it is fp32 already)."""
    import torch

    return {k: torch.as_tensor(v).float() for k, v in weights.items()}


def reference_tokens(model, features: np.ndarray, language: str | None, sample_len: int | None = None) -> list[int]:
    """openai-whisper's greedy tokens (fp32, no timestamps) for an encoder output ``(1, n_audio_ctx, D)``, at most
    ``sample_len`` of them (default half the text context, 224)."""
    import torch
    import whisper

    options = whisper.DecodingOptions(language=language, without_timestamps=True, fp16=False, temperature=0.0, sample_len=sample_len)
    result = whisper.decode(model, torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), options)
    return list(result[0].tokens if isinstance(result, list) else result.tokens)

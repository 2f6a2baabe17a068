"""Mixed-bit palettization (``--compress mixed:BITS``): per-layer sensitivity, then a recipe.

Sensitivity: for every compressible weight and every candidate width, only that weight is
replaced by its k-means LUT version and the whole model's output is compared with the
unmodified fp32 model on real speech: the encoder's output PSNR on the log-mel of a speech clip,
the decoder's logit PSNR over a prompt and a few text tokens (the same inputs `wconv verify` uses).
The LUT is computed by coremltools' own k-means helper on the fp16 values stored in the
converted model, const by const (the token embedding's vocabulary chunks each get their own LUT,
the query weights carry the folded attention scale), so the measured weight is exactly the one
``palettize_weights`` writes. Runs are cheap because each starts from the cached input of the
sub-block that owns the weight (attention or MLP) and runs only the rest of the network.

Recipe (:func:`choose_recipe`): each layer gets the fewest bits at which one more bit per weight
would lower the output noise by less than a common threshold (the price of a weight bit), the
threshold bisected so that the element-weighted average width meets BITS: the rate-distortion
optimum when the layers' noises add up. On the real base encoder at mixed:4 (iOS16 widths) it
measures 33.9 dB where a common per-layer PSNR threshold gives 32.6 dB and palette4 31.8 dB, at
the same size. Argmax's OD-MBP measures sensitivity the same way, with KL divergence for
decoders and random inputs; the recipe format is wconv's own.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

CANDIDATE_BITS = (2, 3, 4, 6, 8)
IOS16_CANDIDATE_BITS = (2, 4, 6, 8)


def candidate_bits(average_bits: float, min_target: str = "iOS18") -> tuple[int, ...]:
    """Widths to measure: 2..8 (without 3 before iOS 18), plus 1 when the average asks for fewer than 2 bits."""
    from ..job import target_rank

    bits = CANDIDATE_BITS if target_rank(min_target) >= target_rank("iOS18") else IOS16_CANDIDATE_BITS
    return ((1,) + bits) if average_bits < 2 else bits


def kmeans_weight(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (the fp16 const as stored) through coremltools' per-tensor k-means LUT, as float32."""
    import logging

    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    values = np.asarray(values, np.float16)
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "It would be better to use kmeans1d" once per call
    try:
        lut, indices = _get_kmeans_lookup_table_and_weight(bits, values)
    finally:
        logger.setLevel(level)
    return lut.astype(np.float16)[np.asarray(indices).reshape(-1)].astype(np.float32).reshape(values.shape)


class _FakePalettizer:
    """Canonical weights with one MIL const's worth of values replaced by their LUT version."""

    def __init__(self, program, state_dict: dict):
        from .apply import _const_values, match_weights

        self.parts = match_weights(program, state_dict)
        self.values = _const_values(program, [p.const for parts in self.parts.values() for p in parts])
        self.state_dict = state_dict

    def weight(self, name: str, bits: int) -> np.ndarray:
        """The canonical tensor ``name`` as the palettized model computes it (fp32)."""
        original = self.state_dict[name]
        original = original.detach().cpu().numpy() if hasattr(original, "detach") else np.asarray(original)
        flat = original.astype(np.float32).reshape(-1).copy()
        for part in self.parts[name]:
            dense = kmeans_weight(self.values[part.const], bits).reshape(-1) / np.float32(part.scale)
            flat[part.offset:part.offset + part.size] = dense
        return flat.reshape(original.shape)


def _swap(parameter, values: np.ndarray):
    import torch

    saved = parameter.data
    parameter.data = torch.from_numpy(np.ascontiguousarray(values)).reshape(saved.shape).to(saved.dtype)
    return saved


def _openai_module(kind: str, dims, state_dict: dict):
    """openai-whisper's fp32 AudioEncoder or TextDecoder, loaded strictly from the canonical weights."""
    import torch
    import whisper.model

    d = dims
    if kind == "encoder":
        module = whisper.model.AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
    else:
        module = whisper.model.TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer)
    prefix = f"{kind}."
    weights = {k[len(prefix):]: torch.as_tensor(v).float() for k, v in state_dict.items() if k.startswith(prefix)}
    module.load_state_dict(weights, strict=True)
    return module.eval()


class _SDPA:
    """openai-whisper attention through ``scaled_dot_product_attention`` (2.5x faster on CPU), restored after."""

    def __enter__(self):
        import whisper.model

        self.saved = whisper.model.MultiHeadAttention.use_sdpa
        whisper.model.MultiHeadAttention.use_sdpa = True

    def __exit__(self, *exc):
        import whisper.model

        whisper.model.MultiHeadAttention.use_sdpa = self.saved


def encoder_sensitivity(mlmodel, dims, state_dict: dict, mel: np.ndarray, bits=CANDIDATE_BITS,
                        progress: Callable[[str], None] | None = None) -> dict[str, dict[int, float]]:
    """``{encoder weight name: {bits: output PSNR dB}}``, each weight palettized alone.

    ``mlmodel`` is the converted fp16 encoder (its stored values are clustered), ``mel`` a
    ``(1, n_mels, frames)`` log-mel of real speech. The model run is openai-whisper's fp32
    AudioEncoder (the same function as the ANE encoder, canonical weight names), and the
    reference its unmodified output.
    """
    import torch
    import torch.nn.functional as F

    from .apply import mil_program

    fake = _FakePalettizer(mil_program(mlmodel), state_dict)
    encoder = _openai_module("encoder", dims, state_dict)
    params = dict(encoder.named_parameters())
    blocks = encoder.blocks

    def stem_conv2(h):
        x = F.gelu(encoder.conv2(h)).permute(0, 2, 1)
        return x + encoder.positional_embedding[: x.shape[1]]

    def attention(block, x):
        return x + block.attn(block.attn_ln(x))[0]

    def mlp(block, x):
        return x + block.mlp(block.mlp_ln(x))

    def tail(x, first_block):
        for block in blocks[first_block:]:
            x = mlp(block, attention(block, x))
        return encoder.ln_post(x)

    with torch.no_grad(), _SDPA():
        mel_t = torch.from_numpy(np.asarray(mel, np.float32).reshape(1, dims.n_mels, -1))
        conv1_out = F.gelu(encoder.conv1(mel_t))
        x = stem_conv2(conv1_out)
        block_inputs, mlp_inputs = [], []
        for block in blocks:
            block_inputs.append(x)
            x = attention(block, x)
            mlp_inputs.append(x)
            x = mlp(block, x)
        reference = encoder.ln_post(x).numpy()

        def run(name: str) -> torch.Tensor:
            parts = name.removeprefix("encoder.").split(".")
            if parts[0] == "conv1":
                return tail(stem_conv2(F.gelu(encoder.conv1(mel_t))), 0)
            if parts[0] == "conv2":
                return tail(stem_conv2(conv1_out), 0)
            i = int(parts[1])
            if parts[2] in ("attn", "attn_ln"):
                return tail(mlp(blocks[i], attention(blocks[i], block_inputs[i])), i + 1)
            return tail(mlp(blocks[i], mlp_inputs[i]), i + 1)

        return _measure(fake, params, "encoder.", run, reference, bits, progress)


def _measure(fake: _FakePalettizer, params: dict, prefix: str, run, reference, bits, progress):
    """Run ``run(name)`` with each weight palettized at each width in ``bits``: ``{name: {bits: PSNR}}``."""
    from ..verify.metrics import compare

    results: dict[str, dict[int, float]] = {}
    names = [name for name in fake.parts if name.startswith(prefix)]
    for index, name in enumerate(names):
        parameter = params[name.removeprefix(prefix)]
        results[name] = {}
        started = time.perf_counter()
        for width in bits:
            saved = _swap(parameter, fake.weight(name, width))
            try:
                results[name][width] = compare(reference, run(name).numpy())["psnr"]
            finally:
                parameter.data = saved
        if progress is not None:
            widths = " ".join(f"{w}:{results[name][w]:.1f}" for w in bits)
            progress(f"[{index + 1}/{len(names)}] {name} {widths} dB ({time.perf_counter() - started:.1f} s)")
    return results


def decoder_sensitivity(mlmodel, dims, state_dict: dict, encoder_output: np.ndarray, tokens: list[int],
                        bits=CANDIDATE_BITS, progress: Callable[[str], None] | None = None) -> dict[str, dict[int, float]]:
    """``{decoder weight name: {bits: logit PSNR dB}}``, each weight palettized alone.

    Computed with openai-whisper's fp32 TextDecoder (the same function as the ANE decoder, all
    tokens in one call) on ``tokens`` (prompt and a few text tokens) against ``encoder_output``
    ``(1, n_audio_ctx, n_state)`` of real speech. ``mlmodel`` is either converted decoder (fp16).
    """
    import torch

    from .apply import mil_program

    fake = _FakePalettizer(mil_program(mlmodel), state_dict)
    decoder = _openai_module("decoder", dims, state_dict)
    params = dict(decoder.named_parameters())
    blocks = decoder.blocks
    mask = decoder.mask

    with torch.no_grad(), _SDPA():
        features = torch.as_tensor(np.asarray(encoder_output, np.float32))
        ids = torch.tensor([list(tokens)])

        def embed():
            return decoder.token_embedding(ids) + decoder.positional_embedding[: ids.shape[1]]

        def tail(x, first_block):
            for block in blocks[first_block:]:
                x = block(x, features, mask=mask)
            x = decoder.ln(x)
            return x @ decoder.token_embedding.weight.T

        x = embed()
        block_inputs = []
        for block in blocks:
            block_inputs.append(x)
            x = block(x, features, mask=mask)
        reference = (decoder.ln(x) @ decoder.token_embedding.weight.T).numpy()

        def run(name: str) -> torch.Tensor:
            parts = name.removeprefix("decoder.").split(".")
            if parts[0] != "blocks":  # the token embedding: look-up and logits both change
                return tail(embed(), 0)
            i = int(parts[1])
            return tail(block_inputs[i], i)

        return _measure(fake, params, "decoder.", run, reference, bits, progress)


def element_counts(mlmodel, state_dict: dict, prefix: str = "") -> dict[str, int]:
    """``{canonical weight name: elements}`` of the compressible weights of a converted model."""
    from .apply import match_weights

    return {name: sum(part.size for part in parts) for name, parts in match_weights(mlmodel, state_dict).items()
            if name.startswith(prefix)}


def noise(psnr_db: float) -> float:
    """The output error power (relative to the peak's square) that a PSNR stands for; 0 for an unmeasured, lossless width."""
    return 10 ** (-psnr_db / 10)


def _widths_at(sensitivities: dict[str, dict[int, float]], sizes: dict[str, int], price: float, bits) -> dict[str, int]:
    """Each layer's width minimising ``noise + price * elements * bits``: at that width one more bit per weight
    would buy less than ``price`` of output noise per weight bit. An unmeasured width counts as lossless."""
    recipe = {}
    for name, table in sensitivities.items():
        widths = sorted(bits or table)
        recipe[name] = min(widths, key=lambda w: (noise(table.get(w, math.inf)) + price * sizes[name] * w, w))
    return recipe


def average_bits(recipe: dict[str, int], sizes: dict[str, int]) -> float:
    """Element-weighted mean width of a recipe."""
    total = sum(sizes[name] for name in recipe)
    return sum(recipe[name] * sizes[name] for name in recipe) / total


def predicted_psnr(recipe: dict[str, int], sensitivities: dict[str, dict[int, float]]) -> float:
    """The output PSNR if the layers' noises simply add up (they add up to about 1 dB less on Whisper base)."""
    total = sum(noise(sensitivities[name].get(bits, math.inf)) for name, bits in recipe.items())
    return -10 * math.log10(total) if total > 0 else math.inf


def choose_recipe(sensitivities: dict[str, dict[int, float]], sizes: dict[str, int], average: float,
                  bits: tuple[int, ...] | None = None) -> tuple[dict[str, int], float]:
    """``({layer: bits}, price)``: the least output noise for an element-weighted average of at most ``average`` bits.

    Every layer gets the fewest bits at which one more bit per weight would reduce the output noise
    (``10^(-PSNR/10)`` of that layer palettized alone) by less than one common threshold, the
    ``price`` of a weight bit; the price is bisected so the average meets ``average`` (the
    Lagrangian solution of the rate-distortion problem, with the layers' noises adding up).
    ``bits`` are the candidate widths (default: those measured); a width missing from a layer's
    table (the widest is not measured by default) counts as lossless. When even the narrowest
    widths exceed ``average``, every layer gets its narrowest.
    """
    low, high = -80.0, 10.0  # log10 of the price: at 10^-80 every layer takes its widest, at 10^10 its narrowest
    if average_bits(_widths_at(sensitivities, sizes, 10 ** low, bits), sizes) <= average:
        return _widths_at(sensitivities, sizes, 10 ** low, bits), 10 ** low
    for _ in range(200):  # the average only falls as the price rises
        middle = (low + high) / 2
        if average_bits(_widths_at(sensitivities, sizes, 10 ** middle, bits), sizes) <= average:
            high = middle
        else:
            low = middle
    return _widths_at(sensitivities, sizes, 10 ** high, bits), 10 ** high


def make_recipe(sensitivities: dict[str, dict[int, float]], sizes: dict[str, int], average: float, **extra) -> dict:
    """The JSON-serialisable recipe: layers, their measured sensitivities, the average reached."""
    layers, price = choose_recipe(sensitivities, sizes, average, extra.get("candidate_bits"))
    return {
        "format": "wconv-mixed-bit-recipe/1",
        "target_average_bits": average,
        "average_bits": round(average_bits(layers, sizes), 4),
        "price_per_weight_bit": price,
        "predicted_psnr_db": round(predicted_psnr(layers, sensitivities), 3),
        "metric": "PSNR dB of the model output with only that layer palettized (per-tensor k-means)",
        "group_size": None,
        "layers": layers,
        "elements": dict(sizes),
        "sensitivity": {name: {str(bits): round(value, 3) for bits, value in table.items()}
                        for name, table in sensitivities.items()},
        **extra,
    }


def search(mlmodel, kind: str, dims, state_dict: dict, average: float, *, mel: np.ndarray | None = None,
           encoder_output: np.ndarray | None = None, tokens: list[int] | None = None, min_target: str = "iOS18",
           bits: tuple[int, ...] | None = None, measure_widest: bool = False,
           progress: Callable[[str], None] | None = None) -> dict:
    """Sensitivity search and recipe (:func:`make_recipe`) for one converted fp16 artifact.

    ``kind`` "encoder" needs ``mel`` ``(1, n_mels, 3000)``; a decoder kind needs
    ``encoder_output`` (fp32 encoder output of the same speech, ``(1, n_audio_ctx, n_state)``)
    and ``tokens`` (prompt plus a few text tokens). The widest candidate is only measured with
    ``measure_widest`` (it never changes the recipe: a layer gets it when nothing narrower passes).
    """
    from .apply import mil_program

    started = time.perf_counter()
    bits = tuple(sorted(bits or candidate_bits(average, min_target)))
    measured = bits if measure_widest else bits[:-1]
    program = mil_program(mlmodel)
    if kind == "encoder":
        table = encoder_sensitivity(program, dims, state_dict, mel, measured, progress)
        prefix = "encoder."
    else:
        table = decoder_sensitivity(program, dims, state_dict, encoder_output, tokens, measured, progress)
        prefix = "decoder."
    sizes = element_counts(program, state_dict, prefix)
    return make_recipe(table, sizes, average, candidate_bits=list(bits), artifact=kind,
                       search_seconds=round(time.perf_counter() - started, 1))

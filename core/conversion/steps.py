"""The two Core ML decoding-step models, both wrapping the shared ANE :class:`~wconv.ane.TextDecoder`.

* :class:`StatefulDecoder` (iOS 18): each layer's self-attention keys and values are registered
  buffers written inside the graph, which coremltools turns into ``read_state`` /
  ``coreml_update_state`` on fp16 states; the host passes only token, position and encoder output.
* :class:`CacheIODecoder` (iOS 16): WhisperKit's TextDecoder contract, the host keeps the cache.

Both write the step's keys and values into the cache by blending with a one-hot mask over the
positions (elementwise, ANE-friendly, no scatter) and attend over the whole fixed-length cache,
later positions masked with -1e4. Their IO contracts are in :mod:`wconv.layouts.contracts`.

Cross-attention keys and values are recomputed from the encoder output at every step, not
computed once per audio by an extra "cross-kv" model. Measured with ``benchmarks/decode.py`` (base,
wconv's CPU evaluator, interleaved medians): the projection takes 345 of the stateful step's
645 ms, so a step fed precomputed keys/values would take about 300 ms there; but it would take
``2 * D * L * 1500`` fp16 values (18.4 MB for base) as inputs every step, 20.1 MB of IO per token
instead of 1.6 MB, more than three times the whole self-attention cache that cache-io copies
(5.5 MB). Nor can states hold them: writing a state only at the first step needs control flow
(a one-hot blend would still compute the projection every step). We keep the IO-minimal
recompute, which WhisperKit's cache-io contract requires anyway; the trade should be re-measured
on the Neural Engine, where arithmetic is cheap and memory traffic is not.
"""

from __future__ import annotations

import torch
from torch import nn

from ..job import ArtifactKind
from ..layouts.contracts import MASKED, kv_state_name
from .ane import TextDecoder, load_canonical


def write_at(cache: torch.Tensor, new: torch.Tensor, write_mask: torch.Tensor) -> torch.Tensor:
    """``cache`` ``(1, C, 1, S)`` with the column ``new`` ``(1, C, 1, 1)`` written where ``write_mask`` ``(1, 1, 1, S)`` is 1."""
    return cache * (torch.tensor(1.0, dtype=write_mask.dtype) - write_mask) + new * write_mask


class StatefulDecoder(nn.Module):
    """``(input_ids, cache_length, encoder_output_embeds) -> logits (1, 1, n_vocab)``, the cache in buffers.

    The buffers are float32 so the PyTorch module is an exact reference; Core ML keeps them as
    fp16 states named by :func:`wconv.layouts.contracts.kv_state_name`.
    """

    def __init__(self, dims, text_context: int | None = None):
        super().__init__()
        with torch.device("meta"):  # the weights come in place from build_decoder
            self.decoder = TextDecoder(dims)
        self.n_text_ctx = text_context or dims.n_text_ctx
        for layer in range(dims.n_text_layer):
            for kind in ("key", "value"):
                cache = torch.zeros(1, dims.n_text_state, 1, self.n_text_ctx)
                self.register_buffer(kv_state_name(kind, layer), cache, persistent=False)

    def layer_cache(self, layer: int, write_mask: torch.Tensor):
        """The ``kv_cache`` function of one layer: write into its buffers, attend over them."""
        keys = self.get_buffer(kv_state_name("key", layer))
        values = self.get_buffer(kv_state_name("value", layer))

        def write(key, value):
            # attend over the written tensors, not the buffers: views of a mutated buffer are
            # replayed at every use after torch.export's functionalization (one split per head)
            written = write_at(keys, key, write_mask), write_at(values, value, write_mask)
            keys.copy_(written[0])
            values.copy_(written[1])
            return written

        return write

    def forward(self, input_ids, cache_length, encoder_output_embeds):
        dtype = self.decoder.ln.weight.dtype  # inputs as wide as the weights (an fp16 module takes fp32 inputs too)
        encoder_output_embeds = encoder_output_embeds.to(dtype)
        positions = torch.arange(self.n_text_ctx, dtype=cache_length.dtype)
        write_mask = (positions == cache_length).to(dtype).view(1, 1, 1, -1)
        mask = (positions > cache_length).to(dtype).view(1, -1, 1, 1) * torch.tensor(MASKED, dtype=dtype)
        caches = [self.layer_cache(layer, write_mask) for layer in range(len(self.decoder.blocks))]
        logits, _ = self.decoder(input_ids, cache_length, encoder_output_embeds, caches, mask)
        return logits.view(1, 1, -1)


class CacheIODecoder(nn.Module):
    """WhisperKit's TextDecoder: the caches and masks come in, the step's key/value slices go out.

    Returns ``logits (1, 1, n_vocab)``, ``key_cache_updates`` and ``value_cache_updates``
    ``(1, D*L, 1, 1)`` and, when ``alignment_heads`` (``[layer, head]`` pairs) are given,
    ``alignment_heads_weights (1, n_audio_ctx)``: their cross-attention weights averaged.
    """

    def __init__(self, dims, alignment_heads=None):
        super().__init__()
        with torch.device("meta"):  # the weights come in place from build_decoder
            self.decoder = TextDecoder(dims)
        self.n_state = dims.n_text_state
        self.alignment_heads = [(int(layer), int(head)) for layer, head in alignment_heads or []]

    def forward(self, input_ids, cache_length, key_cache, value_cache, kv_cache_update_mask,
                encoder_output_embeds, decoder_key_padding_mask):
        dtype = self.decoder.ln.weight.dtype  # inputs as wide as the weights (an fp16 module takes fp32 inputs too)
        key_cache, value_cache, encoder_output_embeds, decoder_key_padding_mask = (
            t.to(dtype) for t in (key_cache, value_cache, encoder_output_embeds, decoder_key_padding_mask))
        write_mask = kv_cache_update_mask.to(dtype).view(1, 1, 1, -1)  # int32, as WhisperKit allocates it
        new_keys, new_values = [], []

        def layer_cache(keys, values):
            def write(key, value):
                new_keys.append(key)
                new_values.append(value)
                return write_at(keys, key, write_mask), write_at(values, value, write_mask)
            return write

        layers = zip(key_cache.split(self.n_state, dim=1), value_cache.split(self.n_state, dim=1))
        caches = [layer_cache(keys, values) for keys, values in layers]
        mask = decoder_key_padding_mask.view(1, -1, 1, 1)
        logits, cross_weights = self.decoder(input_ids, cache_length, encoder_output_embeds, caches, mask)
        outputs = (logits.view(1, 1, -1), torch.cat(new_keys, dim=1), torch.cat(new_values, dim=1))
        if not self.alignment_heads:
            return outputs
        heads = [cross_weights[layer][head] for layer, head in self.alignment_heads]
        return outputs + (torch.cat(heads, dim=2).mean(dim=2).view(1, -1),)


STEP_MODULES = {
    ArtifactKind.DECODER_STATEFUL: lambda dims, alignment_heads, text_context: StatefulDecoder(dims, text_context),
    ArtifactKind.DECODER_CACHE_IO: lambda dims, alignment_heads, text_context: CacheIODecoder(dims, alignment_heads),
}


def build_decoder(kind: ArtifactKind | str, dims, state_dict: dict, alignment_heads=None, text_context: int | None = None,
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """The decoding-step module of a decoder artifact kind in ``dtype``, loaded from a canonical state dict.

    ``text_context`` is the length of the self-attention cache (default the model's ``n_text_ctx``);
    the cache-io module takes it from its inputs' shapes."""
    module = STEP_MODULES[ArtifactKind(kind)](dims, alignment_heads, text_context)
    load_canonical(module.decoder, state_dict, "decoder.", dtype)
    return module.to(dtype).eval()

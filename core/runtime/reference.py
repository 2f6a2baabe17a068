"""openai-whisper PyTorch models built from canonical weights: the fp32 reference for verification
and the host-side decoder for ``wconv transcribe`` when no Core ML decoder was converted."""

from __future__ import annotations

import numpy as np


def whisper_model(dims, state_dict: dict, alignment_heads: list | None = None):
    """An fp32 ``whisper.model.Whisper`` loaded strictly from a canonical state dict."""
    import torch
    import whisper.model

    model = whisper.model.Whisper(dims)
    weights = {k: torch.as_tensor(v).float() for k, v in state_dict.items() if k != "alignment_heads"}
    model.load_state_dict(weights, strict=True)
    if alignment_heads:
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        for layer, head in alignment_heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()


class LazyEncoder:
    """openai-whisper's own AudioEncoder in fp32, built on first call (saves memory during conversion)."""

    def __init__(self, dims, state_dict: dict):
        self.dims = dims
        self.state_dict = state_dict
        self._encoder = None

    def __call__(self, mel):
        import torch

        if self._encoder is None:
            import whisper.model

            d = self.dims
            encoder = whisper.model.AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
            prefix = "encoder."
            weights = {k[len(prefix):]: torch.as_tensor(v).float() for k, v in self.state_dict.items() if k.startswith(prefix)}
            encoder.load_state_dict(weights, strict=True)
            self._encoder = encoder.eval()
        with torch.no_grad():
            return self._encoder(mel.float())


def reference_tokens(model, features: np.ndarray, language: str | None) -> list[int]:
    """openai-whisper's greedy tokens (fp32, no timestamps) for an encoder output ``(1, n_audio_ctx, D)``."""
    import torch
    import whisper

    options = whisper.DecodingOptions(language=language, without_timestamps=True, fp16=False, temperature=0.0)
    result = whisper.decode(model, torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), options)
    return list(result[0].tokens if isinstance(result, list) else result.tokens)

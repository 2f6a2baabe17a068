"""The one set of Neural-Engine-friendly Whisper modules every model family maps its weights onto.

ANE rules applied here (Apple's ml-ane-transformers principles, written anew):

* activations are channels-first rank-4 tensors ``(B, C, 1, S)``;
* every ``nn.Linear`` is a 1x1 ``nn.Conv2d``; the audio convolutions are ``(1, 3)`` Conv2d;
* attention is computed per head (split-einsum), no reshape of the sequence into heads; the keys are
  transposed once for all heads, not per head (fewer ops and copies);
* :class:`ChannelLayerNorm` normalises over the channel axis and applies ``x̂ * weight + bias``,
  which equals ``torch.nn.LayerNorm`` for *any* affine parameters (zero weights included);
* no tensor dimension of a weight or a matmul exceeds 16384 (the largest the ANE loads): the
  vocabulary projection is computed in chunks.

The encoder runs whole sequences; the :class:`TextDecoder` runs one token per call against a
self-attention key/value cache that the Core ML wrappers in :mod:`wconv.decoder` keep.
:class:`LogMelSpectrogram` is openai-whisper's feature extractor in the same layout (WhisperKit's
MelSpectrogram model).

Module and parameter names equal openai-whisper's, so a family only has to name its weights the
openai way (the *canonical* state dict) and :func:`load_canonical` reshapes them into place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConversionError

ANE_MAX_DIM = 16384  # the largest tensor dimension the Neural Engine loads (whisper.cpp, WhisperKit)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of a ``(B, C, 1, S)`` tensor, exact for any weight and bias."""

    def __init__(self, n_state: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_state))
        self.bias = nn.Parameter(torch.zeros(n_state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centered = x - mean
        variance = (centered * centered).mean(dim=1, keepdim=True)
        normalized = centered * torch.rsqrt(variance + torch.tensor(self.eps, dtype=x.dtype))
        no_mean, unit_variance = torch.zeros_like(self.weight), torch.ones_like(self.weight)  # x̂ is normalised already
        return F.batch_norm(normalized, no_mean, unit_variance, self.weight, self.bias, training=False, eps=0.0)


def split_head_attention(q, k, v, n_head: int, mask: torch.Tensor | None = None):
    """Scaled dot-product attention on ``(B, C, 1, S)`` tensors, one einsum pair per head.

    ``mask`` is additive, shaped ``(1, S_k, 1, S_q)`` (keys on dim 1, like the scores).
    Returns the attended values and the list of each head's weights ``(B, S_k, 1, S_q)``.
    """
    head_dim = q.shape[1] // n_head
    q = q * torch.tensor(head_dim**-0.5, dtype=q.dtype)
    heads, head_weights = [], []
    keys = k.transpose(1, 3).split(head_dim, 3)  # one transpose for all heads: (B, S_k, 1, C / n_head) each
    for q_h, k_h, v_h in zip(q.split(head_dim, 1), keys, v.split(head_dim, 1)):
        scores = torch.einsum("bchq,bkhc->bkhq", q_h, k_h)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=1)
        heads.append(torch.einsum("bkhq,bchk->bchq", weights, v_h))
        head_weights.append(weights)
    return torch.cat(heads, dim=1), head_weights


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with 1x1-conv projections (no key bias, as in Whisper)."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Conv2d(n_state, n_state, 1)
        self.key = nn.Conv2d(n_state, n_state, 1, bias=False)
        self.value = nn.Conv2d(n_state, n_state, 1)
        self.out = nn.Conv2d(n_state, n_state, 1)

    def forward(self, x, context=None, mask=None, kv_cache=None):
        """Attend from ``x`` to ``context`` (default: ``x``); returns the output and the per-head weights.

        ``kv_cache`` (decoding, one token per call) takes this call's keys and values and returns
        the ones to attend over: the cache with the new ones written in.
        """
        query = self.query(x)
        source = x if context is None else context
        key, value = self.key(source), self.value(source)
        if kv_cache is not None:
            key, value = kv_cache(key, value)
        attended, weights = split_head_attention(query, key, value, self.n_head, mask)
        return self.out(attended), weights


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention, optional cross-attention, GELU MLP."""

    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = ChannelLayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = ChannelLayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Conv2d(n_state, 4 * n_state, 1), nn.GELU(), nn.Conv2d(4 * n_state, n_state, 1))
        self.mlp_ln = ChannelLayerNorm(n_state)

    def forward(self, x, context=None, mask=None, kv_cache=None):
        """The block's output and its cross-attention weights per head (empty without cross-attention).

        ``mask`` and ``kv_cache`` apply to the self-attention.
        """
        attended, _ = self.attn(self.attn_ln(x), mask=mask, kv_cache=kv_cache)
        x = x + attended
        cross_weights = []
        if self.cross_attn is not None:
            attended, cross_weights = self.cross_attn(self.cross_attn_ln(x), context)
            x = x + attended
        return x + self.mlp(self.mlp_ln(x)), cross_weights


class AudioEncoder(nn.Module):
    """Whisper's audio encoder in ANE layout.

    Input: log-mel ``(1, n_mels, n_frames)`` (whisper.cpp's layout) or ``(1, n_mels, 1, n_frames)``
    (WhisperKit's). Output ``(1, n_frames/2, n_state)`` (whisper.cpp's) or, with
    ``channels_first_output=True``, ``(1, n_state, 1, n_frames/2)`` (WhisperKit's).
    Shorter inputs than 3000 frames use the first positions of the embedding.
    """

    def __init__(self, dims, channels_first_output: bool = False):
        super().__init__()
        n_state = dims.n_audio_state
        self.channels_first_output = channels_first_output
        self.conv1 = nn.Conv2d(dims.n_mels, n_state, (1, 3), padding=(0, 1))
        self.conv2 = nn.Conv2d(n_state, n_state, (1, 3), stride=(1, 2), padding=(0, 1))
        self.register_buffer("positional_embedding", torch.zeros(dims.n_audio_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, dims.n_audio_head) for _ in range(dims.n_audio_layer)
        )
        self.ln_post = ChannelLayerNorm(n_state)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        mel = mel.to(self.conv1.weight.dtype)  # the declared input dtype may be wider than the weights
        x = F.gelu(self.conv1(mel.unsqueeze(2) if mel.dim() == 3 else mel))
        x = F.gelu(self.conv2(x))
        positions = self.positional_embedding[: x.shape[-1]].transpose(0, 1)
        x = x + positions.unsqueeze(0).unsqueeze(2)
        for block in self.blocks:
            x, _ = block(x)
        x = self.ln_post(x)
        if self.channels_first_output:
            return x
        return x.squeeze(2).transpose(1, 2)


N_FFT = 400  # openai-whisper's STFT (whisper.audio): 25 ms windows of 16 kHz audio
HOP_LENGTH = 160  # every 10 ms


class LogMelSpectrogram(nn.Module):
    """openai-whisper's ``log_mel_spectrogram`` of 30 s of 16 kHz audio as convolutions.

    ``(480000,)`` samples -> ``(1, n_mels, 1, 3000)``: reflect-padded STFT (n_fft 400, hop 160,
    periodic Hann window, folded into the cosine and sine kernels of one ``(1, 400)`` conv with
    stride 160), power spectrum, the mel filterbank as a 1x1 conv (openai-whisper's bundled
    ``mel_filters.npz``, never downloaded), ``log10`` clamped at 1e-10 and at max - 8, ``(x + 4) / 4``.
    """

    def __init__(self, n_mels: int):
        from whisper.audio import mel_filters

        super().__init__()
        n_bins = N_FFT // 2 + 1
        angles = 2 * math.pi * torch.outer(torch.arange(n_bins, dtype=torch.float64), torch.arange(N_FFT, dtype=torch.float64)) / N_FFT
        window = torch.hann_window(N_FFT, dtype=torch.float64)
        kernels = torch.cat([torch.cos(angles) * window, -torch.sin(angles) * window])
        self.register_buffer("dft_kernels", kernels.float()[:, None, None, :])
        self.register_buffer("mel_filters", mel_filters("cpu", n_mels).float()[:, :, None, None])

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        padded = F.pad(audio.view(1, 1, -1), (N_FFT // 2, N_FFT // 2), mode="reflect").unsqueeze(2)
        spectrum = F.conv2d(padded, self.dft_kernels, stride=(1, HOP_LENGTH))[..., :-1]  # whisper drops the last frame
        real, imaginary = spectrum.split(spectrum.shape[1] // 2, dim=1)
        mel = F.conv2d(real * real + imaginary * imaginary, self.mel_filters)
        log_mel = torch.clamp(mel, min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
        return (log_mel + 4.0) / 4.0


class TokenEmbedding(nn.Module):
    """Whisper's token embedding, which is also its output projection (tied weights).

    Both read the table through the same chunks of at most :data:`ANE_MAX_DIM` rows, shaped as 1x1
    conv kernels: the logits are one conv per chunk, and the look-up gathers from every chunk and
    keeps the chunk that holds the token, so the converted model stores the table once.
    """

    def __init__(self, n_vocab: int, n_state: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_vocab, n_state))
        n_chunks = -(-n_vocab // ANE_MAX_DIM)
        self.chunk_rows = -(-n_vocab // n_chunks)

    def kernels(self) -> list[tuple[int, torch.Tensor]]:
        """(first token id, ``(rows, n_state, 1, 1)`` kernel) of every chunk."""
        chunks = self.weight.split(self.chunk_rows)
        return [(i * self.chunk_rows, rows[:, :, None, None]) for i, rows in enumerate(chunks)]

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """The embedding ``(1, n_state, 1, 1)`` of one token id (an int tensor of shape ``(1,)``)."""
        embedded = None
        for first, kernel in self.kernels():
            row = token - first
            clamped = row.clamp(0, kernel.shape[0] - 1)
            found = kernel.index_select(0, clamped) * (clamped == row).to(kernel.dtype).view(1, 1, 1, 1)
            embedded = found if embedded is None else embedded + found
        return embedded

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ weight.T`` for ``(1, n_state, 1, S)`` hidden states, as ``(1, n_vocab, 1, S)``."""
        return torch.cat([F.conv2d(hidden, kernel) for _, kernel in self.kernels()], dim=1)


class TextDecoder(nn.Module):
    """Whisper's text decoder in ANE layout, one token per call.

    Takes the token id and its position (int tensors of shape ``(1,)``), the encoder output
    ``(1, n_state, 1, n_audio_ctx)``, one ``kv_cache`` function per layer (see
    :class:`MultiHeadAttention`) and the additive self-attention mask ``(1, n_text_ctx, 1, 1)`` over
    the cached positions. Returns logits ``(1, n_vocab, 1, 1)`` and every layer's per-head
    cross-attention weights. Cross-attention keys and values are computed from the encoder output
    at every call (the choice is measured in :mod:`wconv.decoder`).
    """

    def __init__(self, dims):
        super().__init__()
        n_state = dims.n_text_state
        self.token_embedding = TokenEmbedding(dims.n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, dims.n_text_head, cross_attention=True) for _ in range(dims.n_text_layer)
        )
        self.ln = ChannelLayerNorm(n_state)

    def forward(self, token, position, encoder_output, kv_caches, mask):
        position_embedding = self.positional_embedding.index_select(0, position).view(1, -1, 1, 1)
        x = self.token_embedding(token) + position_embedding
        cross_weights = []
        for block, kv_cache in zip(self.blocks, kv_caches):
            x, weights = block(x, encoder_output, mask, kv_cache)
            cross_weights.append(weights)
        return self.token_embedding.logits(self.ln(x)), cross_weights


def load_canonical(module: nn.Module, state_dict: dict, prefix: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Put canonical (openai-named) weights under ``prefix`` into an ANE module as ``dtype``, strictly.

    2-D linear weights become 1x1 conv kernels, 3-D conv kernels gain a unit height; everything
    else must match exactly. Tensors already in ``dtype`` are used in place, not copied (the module
    may be built on the meta device). A missing or surplus tensor, or one that ``dtype`` cannot
    hold, is a :class:`ConversionError`.
    """
    wanted = module.state_dict()
    supplied = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    missing = sorted(set(wanted) - set(supplied))
    surplus = sorted(set(supplied) - set(wanted))
    if missing or surplus:
        raise ConversionError(
            f"weights do not fit the ANE {type(module).__name__}: missing {missing[:3]}, unexpected {surplus[:3]}"
        )
    shaped = {}
    for name, target in wanted.items():
        tensor = torch.as_tensor(supplied[name])
        if tensor.numel() != target.numel():
            raise ConversionError(f"tensor {prefix}{name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        shaped[name] = tensor.reshape(target.shape).to(dtype)
        narrowed = shaped[name].dtype.itemsize < tensor.dtype.itemsize
        if narrowed and not shaped[name].isfinite().all() and tensor.isfinite().all():
            raise ConversionError(f"tensor {prefix}{name} has values beyond the range of {dtype}, the converted model's weights")
    module.load_state_dict(shaped, strict=True, assign=True)
    return module


def build_encoder(dims, state_dict: dict, channels_first_output: bool = False, dtype: torch.dtype = torch.float32) -> AudioEncoder:
    """The ANE audio encoder in eval mode, its weights those of a canonical state dict as ``dtype``."""
    with torch.device("meta"):
        encoder = AudioEncoder(dims, channels_first_output)
    return load_canonical(encoder, state_dict, "encoder.", dtype).eval()

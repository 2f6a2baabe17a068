"""Random-weight checkpoints with the real Whisper dimensions, for offline trials, tests and benchmarks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

REAL_DIMS = {
    "tiny": dict(n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_text_layer=4),
    "base": dict(n_audio_state=512, n_audio_head=8, n_audio_layer=6, n_text_layer=6),
    "small": dict(n_audio_state=768, n_audio_head=12, n_audio_layer=12, n_text_layer=12),
    "medium": dict(n_audio_state=1024, n_audio_head=16, n_audio_layer=24, n_text_layer=24),
    "large-v3": dict(n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_text_layer=32, n_mels=128, n_vocab=51866),
}


def real_dims(size: str):
    """``whisper.model.ModelDimensions`` of an official model size."""
    from whisper.model import ModelDimensions

    d = {"n_mels": 80, "n_vocab": 51865, **REAL_DIMS[size]}
    return ModelDimensions(
        n_mels=d["n_mels"], n_audio_ctx=1500, n_audio_state=d["n_audio_state"], n_audio_head=d["n_audio_head"],
        n_audio_layer=d["n_audio_layer"], n_vocab=d["n_vocab"], n_text_ctx=448, n_text_state=d["n_audio_state"],
        n_text_head=d["n_audio_head"], n_text_layer=d["n_text_layer"],
    )


def random_state_dict(dims, seed: int = 0) -> dict[str, torch.Tensor]:
    """openai-whisper weights with random values, LayerNorm affines included (some exactly 0, some negative)."""
    from whisper.model import Whisper

    torch.manual_seed(seed)
    model = Whisper(dims)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed + 1)
    # openai-whisper leaves this Parameter uninitialised (torch.empty): give it real values.
    state["decoder.positional_embedding"] = torch.randn(state["decoder.positional_embedding"].shape, generator=generator) * 0.02
    for name, tensor in state.items():
        if "ln" in name.split(".")[-2]:
            values = torch.randn(tensor.shape, generator=generator) * 0.5 + (1.0 if name.endswith("weight") else 0.0)
            values[::5] = 0.0
            state[name] = values
    return state


def write_random_checkpoint(path: Path, size: str = "tiny", seed: int = 0, fp16: bool = False) -> Path:
    """Save an openai-format checkpoint ({"dims", "model_state_dict"}) with random weights (fp16 like the official ones)."""
    dims = real_dims(size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_state_dict(dims, seed)
    if fp16:
        state = {name: tensor.half() for name, tensor in state.items()}
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": state}, path)
    return path

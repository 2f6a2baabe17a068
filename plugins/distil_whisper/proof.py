"""Proof that a distil model's encoder is its parent's: the encoder dimensions first, then every encoder
tensor, compared as the distil stores it.

A ggml file stores each tensor in a type (f32, f16 or a quantized block format); any other source is
compared in fp16, the precision the Core ML encoder stores. A tensor is the parent's when the distil's
stored bytes are exactly the parent's values stored the distil's way: as they are when the types agree,
else the parent's values encoded in the distil's type by ggml's own quantizer (from the values, or from
their fp16 rounding, which is what whisper.cpp's quantize tool reads from an f16 file). So a q5_0 distil
matches an f16 or f32 parent bit for bit when it was quantized from that parent's weights. A quantized
parent proves only a distil stored in the same type: its values lost what the other types keep.
"""

from __future__ import annotations

import numpy as np
import torch

import wconv
from wconv import InputError, LoadedModel

ENCODER_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
FLOAT_TYPES = ("f32", "f16")


class EncoderDiffers(InputError):
    """The distil encoder is not the parent's (the user may pass --convert-own-encoder)."""


def check_same_encoder_shape(model: LoadedModel, parent: LoadedModel) -> None:
    for field in ENCODER_DIMS:
        ours, theirs = getattr(model.dims, field), getattr(parent.dims, field)
        if ours != theirs:
            raise InputError(f"{model.name} has {field}={ours} but its parent {parent.name} has {theirs}: "
                             "they cannot share an encoder; pass the right --parent")


class StoredTensors:
    """A model's tensors as stored: a ggml file's bytes and types, else fp16 values."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.ggml = wconv.read_ggml(model.source) if wconv.is_ggml_file(model.source) else None
        self.names = {name for name in model.state_dict if name.startswith("encoder.")}

    def type_of(self, name: str) -> str:
        return self.ggml.tensors[name].ggml_type if self.ggml else "f16"

    def stored(self, name: str) -> bytes:
        return self.ggml.raw(name).tobytes() if self.ggml else self.encoded(name, "f16")[0]

    def values(self, name: str) -> np.ndarray:
        if self.ggml:
            return self.ggml.array(name)
        return torch.as_tensor(self.model.state_dict[name]).float().numpy()

    def encoded(self, name: str, ggml_type: str) -> list[bytes]:
        """This tensor's values as a file of ``ggml_type`` would store them (from the values or their fp16 rounding)."""
        values = np.asarray(self.values(name), dtype=np.float32).reshape(-1, self._row_length(name))
        candidates = [values] if ggml_type in FLOAT_TYPES else [values, values.astype(np.float16)]
        return [wconv.quantize_blocks(candidate, ggml_type) for candidate in candidates]

    def _row_length(self, name: str) -> int:
        shape = self.ggml.tensors[name].shape if self.ggml else tuple(self.model.state_dict[name].shape)
        return shape[-1] if shape else 1


def first_differing_encoder_tensor(model: LoadedModel, parent: LoadedModel) -> str | None:
    """The first encoder tensor (by name) that is not the parent's, or that only one side has; a tensor stored in
    another type than the parent's is named with how it was compared."""
    ours, theirs = StoredTensors(model), StoredTensors(parent)
    for name in sorted(ours.names | theirs.names):
        if name not in ours.names or name not in theirs.names:
            return name
        wanted, given = ours.type_of(name), theirs.type_of(name)
        if given == wanted:
            if ours.stored(name) != theirs.stored(name):
                return name
        elif given not in FLOAT_TYPES:
            raise InputError(f"{parent.name} stores {name} as {given} but {model.name} as {wanted}: a quantized parent cannot "
                             f"prove a tensor stored otherwise; give the parent in f16 (its ggml-<model>.bin or checkpoint)")
        elif ours.stored(name) not in theirs.encoded(name, wanted):
            return f"{name} (its {wanted} data is not ggml's {wanted} of the parent's {given} values)"
    return None

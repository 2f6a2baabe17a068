"""whisper.cpp's ggml model file: write it, read it back (header, tensors checked against the hparams,
quantized blocks dequantized), quantize its weight matrices.

The layout and the per-tensor type rules follow whisper.cpp's ``models/convert-pt-to-ggml.py`` (f16 files),
``examples/quantize`` (quantized files) and the loader ``whisper_model_load`` in ``src/whisper.cpp``.
Block formats and rounding follow ggml's ``quantize_row_*_ref`` and ``dequantize_row_*``, so a file written here holds the bytes
whisper.cpp's own quantize tool would write from the same f32 weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError

GGML_MAGIC = 0x67676D6C
QUANT_VERSION = 2  # GGML_QNT_VERSION: examples/quantize writes ftype + QUANT_VERSION * QUANT_VERSION_FACTOR
QUANT_VERSION_FACTOR = 1000
BLOCK_SIZE = 32  # values per block in every q*_0 / q*_1 format

TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}  # enum ggml_type
FILE_FTYPES = {"f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}  # enum ggml_ftype
QUANTIZED_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
WRITABLE_TYPES = ("f16", *QUANTIZED_TYPES)

_BLOCK_DTYPES = {
    "q4_0": np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    "q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    "q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "q8_0": np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
}
_FLOAT_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}
_CODE_BITS = {"q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}

# 2-D tensors that both converters keep f32 and that examples/quantize never quantizes (its `to_skip` list).
_F32_MATRICES = frozenset({
    "encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding",
})
_HPARAM_NAMES = (
    "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
    "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels",
)


class TensorInfo(NamedTuple):
    """One tensor of a ggml file: numpy-order shape, stored type name, where its data starts and its size."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    offset: int
    nbytes: int


def ggml_file_name(model_name: str, ggml_type: str = "f16") -> str:
    """``ggml-<model>.bin`` for f16, ``ggml-<model>-<type>.bin`` for a quantized file.

    whisper.cpp strips a ``-qX_Y`` suffix before appending ``-encoder.mlmodelc``, so every variant pairs
    with the same Core ML encoder ``ggml-<model>-encoder``.
    """
    _check_writable(ggml_type)
    if not model_name or "/" in model_name or os.sep in model_name:
        raise InputError(f"model name '{model_name}' cannot be part of a file name")
    last_part = model_name.rsplit("-", 1)[-1]
    if len(last_part) == 4 and last_part[0] == "q" and last_part[2] == "_":
        raise InputError(f"model name '{model_name}' ends like a quantization suffix, which whisper.cpp strips "
                         "when it looks for the Core ML encoder; rename the model")
    return f"ggml-{model_name}.bin" if ggml_type == "f16" else f"ggml-{model_name}-{ggml_type}.bin"


def write_ggml(path, dims, state_dict, vocab: list[bytes], ggml_type: str = "f16") -> Path:
    """Write a whisper.cpp ggml model file at ``path`` (via a temporary file in the same directory).

    ``dims`` is a ``whisper.model.ModelDimensions``; ``state_dict`` maps openai-whisper tensor names to torch
    tensors or numpy arrays (entries whisper.cpp does not use are ignored); ``vocab`` is the BPE vocabulary as
    raw bytes in token-id order. ``ggml_type`` is the type of the weight matrices: f16 or a quantized type.
    """
    _check_writable(ggml_type)
    if dims.n_text_state != dims.n_audio_state:
        raise InputError(f"whisper.cpp needs n_text_state == n_audio_state, "
                         f"got {dims.n_text_state} and {dims.n_audio_state}")
    if len(vocab) > dims.n_vocab:
        raise InputError(f"vocabulary has {len(vocab)} tokens but the model's n_vocab is {dims.n_vocab}")
    shapes = expected_tensor_shapes(dims)
    plan = [(name, shape, _storage_type(name, shape, ggml_type)) for name, shape in shapes.items()]
    missing = [name for name, _, _ in plan if name not in state_dict]
    if missing:
        raise InputError(f"state dict lacks {len(missing)} tensor(s) whisper.cpp needs, e.g. {', '.join(missing[:3])}")

    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as out:
            out.write(_header_bytes(dims, ggml_type, vocab))
            for name, shape, storage in plan:
                values = _as_array(state_dict[name], name, shape)
                out.write(_tensor_header_bytes(name, shape, storage))
                out.write(quantize_blocks(values, storage))
        os.replace(temporary, path)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    return path


def expected_tensor_shapes(dims) -> dict[str, tuple[int, ...]]:
    """Every tensor whisper.cpp loads, with its numpy-order shape as stored (conv biases as ``[n, 1]``)."""
    n_audio, n_text = dims.n_audio_state, dims.n_text_state
    shapes = {
        "encoder.conv1.weight": (n_audio, dims.n_mels, 3),
        "encoder.conv1.bias": (n_audio, 1),
        "encoder.conv2.weight": (n_audio, n_audio, 3),
        "encoder.conv2.bias": (n_audio, 1),
        "encoder.positional_embedding": (dims.n_audio_ctx, n_audio),
    }
    for layer in range(dims.n_audio_layer):
        shapes.update(_block_shapes(f"encoder.blocks.{layer}", n_audio, ("attn",)))
    shapes.update(_layer_norm_shapes("encoder.ln_post", n_audio))
    shapes["decoder.token_embedding.weight"] = (dims.n_vocab, n_text)
    shapes["decoder.positional_embedding"] = (dims.n_text_ctx, n_text)
    for layer in range(dims.n_text_layer):
        shapes.update(_block_shapes(f"decoder.blocks.{layer}", n_text, ("attn", "cross_attn")))
    shapes.update(_layer_norm_shapes("decoder.ln", n_text))
    return shapes


def _block_shapes(prefix: str, n_state: int, attentions: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for attention in attentions:
        for projection in ("query", "key", "value", "out"):
            shapes[f"{prefix}.{attention}.{projection}.weight"] = (n_state, n_state)
            if projection != "key":  # Whisper's key projection has no bias
                shapes[f"{prefix}.{attention}.{projection}.bias"] = (n_state,)
        shapes.update(_layer_norm_shapes(f"{prefix}.{attention}_ln", n_state))
    shapes.update({
        f"{prefix}.mlp.0.weight": (4 * n_state, n_state), f"{prefix}.mlp.0.bias": (4 * n_state,),
        f"{prefix}.mlp.2.weight": (n_state, 4 * n_state), f"{prefix}.mlp.2.bias": (n_state,),
    })
    shapes.update(_layer_norm_shapes(f"{prefix}.mlp_ln", n_state))
    return shapes


def _layer_norm_shapes(prefix: str, n_state: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n_state,), f"{prefix}.bias": (n_state,)}


def _storage_type(name: str, shape: tuple[int, ...], ggml_type: str) -> str:
    """whisper.cpp's rule: f32 for 1-D tensors, conv biases and positional embeddings; f16 for the conv
    kernels (its im2col needs them f16); ``ggml_type`` for the attention, MLP and token-embedding matrices."""
    if len(shape) < 2 or name in _F32_MATRICES:
        return "f32"
    if len(shape) == 3:
        return "f16"
    if ggml_type in QUANTIZED_TYPES and shape[-1] % BLOCK_SIZE:
        raise InputError(
            f"cannot write {ggml_type}: {name} has rows of {shape[-1]} values, not a multiple of {BLOCK_SIZE}, and "
            f"whisper.cpp loads every weight matrix of a {ggml_type} file as {ggml_type}; use f16"
        )
    return ggml_type


def _check_writable(ggml_type: str) -> None:
    if ggml_type == "f32":
        raise InputError(
            "ggml type f32 is not supported: whisper.cpp's CPU convolution needs f16 kernels and aborts on an "
            "all-f32 file (whisper.cpp #2557); use f16"
        )
    if ggml_type not in WRITABLE_TYPES:
        raise InputError(f"unknown ggml type '{ggml_type}'; choose one of {', '.join(WRITABLE_TYPES)}")


def _header_bytes(dims, ggml_type: str, vocab: list[bytes]) -> bytes:
    ftype = FILE_FTYPES[ggml_type]
    if ggml_type in QUANTIZED_TYPES:
        ftype += QUANT_VERSION * QUANT_VERSION_FACTOR
    hparams = [getattr(dims, name) for name in _HPARAM_NAMES]
    filters = _mel_filters(dims.n_mels)
    parts = [
        struct.pack("<I11i", GGML_MAGIC, *hparams, ftype),
        struct.pack("<2i", *filters.shape), filters.astype("<f4").tobytes(),
        struct.pack("<i", len(vocab)),
    ]
    for token in vocab:
        parts += [struct.pack("<i", len(token)), bytes(token)]
    return b"".join(parts)


def _mel_filters(n_mels: int) -> np.ndarray:
    """openai-whisper's bundled mel filterbank, shape (n_mels, 201)."""
    from whisper.audio import mel_filters

    if n_mels not in (80, 128):
        raise InputError(f"openai-whisper bundles mel filters for 80 and 128 mel bins only, not {n_mels}")
    return mel_filters("cpu", n_mels).numpy()


def _tensor_header_bytes(name: str, shape: tuple[int, ...], storage: str) -> bytes:
    encoded = name.encode()
    return struct.pack(f"<3i{len(shape)}i", len(shape), len(encoded), TYPE_IDS[storage], *reversed(shape)) + encoded


def _as_array(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor as a float array of ``shape`` (fp16 and fp32 kept as they are, other types as fp32); size-1
    axes may differ (conv biases come as ``[n]``)."""
    if hasattr(value, "detach"):
        import torch

        value = value.detach().cpu()
        value = (value if value.dtype in (torch.float16, torch.float32) else value.float()).numpy()
    array = np.asarray(value)
    if array.dtype not in (np.float16, np.float32):
        array = array.astype(np.float32)
    if array.shape != shape:
        if [n for n in array.shape if n != 1] != [n for n in shape if n != 1]:
            raise InputError(f"tensor {name} has shape {list(array.shape)}, whisper.cpp expects {list(shape)}")
        array = array.reshape(shape)
    return array


def quantize_blocks(values, ggml_type: str) -> bytes:
    """Encode an array (rows along the last axis) as ggml ``ggml_type`` data, byte for byte as ggml does.

    Quantized types need rows that are a multiple of 32 values; f16 and f32 take any shape.
    """
    if ggml_type in _FLOAT_DTYPES:  # an fp16 tensor goes into f16 as it is, with no fp32 round trip
        return np.ascontiguousarray(values, dtype=_FLOAT_DTYPES[ggml_type]).tobytes()
    values = np.ascontiguousarray(values, dtype=np.float32)
    if ggml_type not in _BLOCK_DTYPES:
        raise ValueError(f"unknown ggml type '{ggml_type}'")
    if values.ndim == 0 or values.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"{ggml_type} needs rows that are a multiple of {BLOCK_SIZE} values, got shape {values.shape}")
    blocks = values.reshape(-1, BLOCK_SIZE)
    if ggml_type == "q8_0":
        encoded = _quantize_q8_0(blocks)
    elif ggml_type.endswith("_0"):
        encoded = _quantize_signed_scale(blocks, _CODE_BITS[ggml_type])
    else:
        encoded = _quantize_min_scale(blocks, _CODE_BITS[ggml_type])
    return encoded.tobytes()


def dequantize_blocks(raw: bytes, ggml_type: str, shape) -> np.ndarray:
    """Decode ggml ``ggml_type`` data back to a float32 array of ``shape`` (numpy order)."""
    shape = tuple(shape)
    if ggml_type in _FLOAT_DTYPES:
        return np.frombuffer(raw, dtype=_FLOAT_DTYPES[ggml_type]).astype(np.float32).reshape(shape)
    if ggml_type not in _BLOCK_DTYPES:
        raise ValueError(f"unknown ggml type '{ggml_type}'")
    blocks = np.frombuffer(raw, dtype=_BLOCK_DTYPES[ggml_type])
    scale = blocks["d"].astype(np.float32)[:, None]
    if ggml_type == "q8_0":
        values = blocks["qs"].astype(np.float32) * scale
    else:
        bits = _CODE_BITS[ggml_type]
        codes = _unpack_codes(blocks, bits).astype(np.float32)
        if ggml_type.endswith("_0"):
            values = (codes - np.float32(1 << (bits - 1))) * scale
        else:
            values = codes * scale + blocks["m"].astype(np.float32)[:, None]
    return values.reshape(shape)


def _reciprocal(scale: np.ndarray) -> np.ndarray:
    """1/scale in float32, 0 where the scale is 0 (an all-zero block)."""
    return np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)


def _quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """q8_0: d = absmax/127, q = roundf(x/d) (ties away from zero)."""
    scale = np.abs(blocks).max(axis=1) / np.float32(127)
    scaled = blocks * _reciprocal(scale)[:, None]
    truncated = np.trunc(scaled)
    codes = truncated + np.copysign(np.abs(scaled - truncated) >= 0.5, scaled)  # exact in float32, unlike x + 0.5
    encoded = np.empty(len(blocks), dtype=_BLOCK_DTYPES["q8_0"])
    encoded["d"] = scale
    encoded["qs"] = codes.astype(np.int8)
    return encoded


def _quantize_signed_scale(blocks: np.ndarray, bits: int) -> np.ndarray:
    """q4_0 / q5_0: d = (value of largest magnitude) / -2^(bits-1), so that value maps to code 0."""
    half = np.float32(1 << (bits - 1))
    largest = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
    largest = np.where(largest != 0, largest, np.float32(0))  # an all-zero block gets d = +0, as in ggml
    scale = largest / -half
    codes = np.trunc(blocks * _reciprocal(scale)[:, None] + (half + np.float32(0.5)))
    codes = np.minimum(codes, 2 * half - 1).astype(np.uint8)
    encoded = np.empty(len(blocks), dtype=_BLOCK_DTYPES[f"q{bits}_0"])
    encoded["d"] = scale
    _pack_codes(encoded, codes, bits)
    return encoded


def _quantize_min_scale(blocks: np.ndarray, bits: int) -> np.ndarray:
    """q4_1 / q5_1: m = block min, d = (max - min) / (2^bits - 1), q = trunc((x - m)/d + 0.5)."""
    low, high = blocks.min(axis=1), blocks.max(axis=1)
    top = np.float32((1 << bits) - 1)
    scale = (high - low) / top
    codes = np.trunc((blocks - low[:, None]) * _reciprocal(scale)[:, None] + np.float32(0.5))
    codes = np.minimum(codes, top).astype(np.uint8)
    encoded = np.empty(len(blocks), dtype=_BLOCK_DTYPES[f"q{bits}_1"])
    encoded["d"] = scale
    encoded["m"] = low
    _pack_codes(encoded, codes, bits)
    return encoded


def _pack_codes(encoded: np.ndarray, codes: np.ndarray, bits: int) -> None:
    """Low nibbles: values 0-15 in the low half of each byte, values 16-31 in the high half; for 5-bit codes
    the fifth bit of value j goes to bit j of the little-endian uint32 ``qh``."""
    half = BLOCK_SIZE // 2
    encoded["qs"] = (codes[:, :half] & 0x0F) | ((codes[:, half:] & 0x0F) << 4)
    if bits == 5:
        fifth_bits = ((codes >> 4) & 1).astype(np.uint32)
        encoded["qh"] = (fifth_bits << np.arange(BLOCK_SIZE, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def _unpack_codes(blocks: np.ndarray, bits: int) -> np.ndarray:
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.int32)
    if bits == 5:
        fifth_bits = (blocks["qh"][:, None] >> np.arange(BLOCK_SIZE, dtype=np.uint32)) & 1
        nibbles |= (fifth_bits << 4).astype(np.int32)
    return nibbles


def read_ggml_header(path) -> dict:
    """Parse a ggml whisper file without loading its tensor data.

    Returns ``hparams`` (the 10 dimensions), ``ftype`` (as stored), ``ggml_type`` (its weight type name),
    ``filters`` ((n_mel, n_fft)), ``vocab`` (token bytes) and ``tensors`` (a list of ``TensorInfo``).
    """
    path = Path(path)
    with open(path, "rb") as source:
        return _parse_header(_Reader(source, path))


def is_ggml_file(path) -> bool:
    """Does ``path`` name a file that starts with ggml's magic (whatever its extension)?"""
    try:
        with open(path, "rb") as source:
            return source.read(4) == struct.pack("<I", GGML_MAGIC)
    except OSError:
        return False


def read_ggml(path) -> GgmlModel:
    """A whisper.cpp ggml file, its header parsed and every tensor checked against the shapes its hparams imply."""
    return GgmlModel(path)


class GgmlModel:
    """A ggml whisper file read back: ``dims`` (``whisper.model.ModelDimensions``), ``ggml_type`` (its weight
    type), ``ftype`` (as stored), ``vocab`` (token bytes in id order) and ``tensors`` (``TensorInfo`` by name).

    Tensor data stays in a read-only memory map of the file until asked for: :meth:`raw` gives the stored bytes,
    :meth:`array` the values (f16/f32 as stored, quantized types dequantized to float32).
    """

    def __init__(self, path):
        self.path = Path(path)
        header = read_ggml_header(self.path)
        self.ftype, self.ggml_type, self.vocab = header["ftype"], header["ggml_type"], header["vocab"]
        self.dims = _dims_from_hparams(header["hparams"], len(header["tensors"]), self.path)
        self.tensors = _checked_tensors(header["tensors"], self.dims, self.path)
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")

    def raw(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        return self._data[info.offset:info.offset + info.nbytes]

    def array(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if info.ggml_type in _FLOAT_DTYPES:
            return self.raw(name).view(_FLOAT_DTYPES[info.ggml_type]).reshape(info.shape)
        return dequantize_blocks(self.raw(name), info.ggml_type, info.shape)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every tensor named and shaped the openai-whisper way (conv biases 1-D)."""
        return {name: self.array(name).reshape(-1) if name in _CONV_BIASES else self.array(name) for name in self.tensors}


_CONV_BIASES = ("encoder.conv1.bias", "encoder.conv2.bias")


def _dims_from_hparams(hparams: dict, n_tensors: int, path: Path):
    from whisper.model import ModelDimensions

    if min(hparams.values()) <= 0 or max(hparams["n_audio_layer"], hparams["n_text_layer"]) > n_tensors:
        raise InputError(f"{path} is corrupt: its hparams {hparams} do not describe a Whisper model with {n_tensors} tensors")
    return ModelDimensions(**hparams)


def _checked_tensors(tensors: list[TensorInfo], dims, path: Path) -> dict[str, TensorInfo]:
    """The tensors whisper.cpp needs, by name; a missing, repeated or misshapen one is an InputError naming it."""
    expected = expected_tensor_shapes(dims)
    found: dict[str, TensorInfo] = {}
    for info in tensors:
        if info.name in found:
            raise InputError(f"{path} is corrupt: tensor {info.name} appears twice")
        wanted = expected.get(info.name)
        if wanted is not None and [n for n in info.shape if n != 1] != [n for n in wanted if n != 1]:
            raise InputError(f"{path}: tensor {info.name} has shape {list(info.shape)}, but the file's hparams "
                             f"need {list(wanted)}; the file is corrupt or not a Whisper model")
        found[info.name] = info
    missing = [name for name in expected if name not in found]
    if missing:
        raise InputError(f"{path} lacks {len(missing)} tensor(s) whisper.cpp needs, e.g. {missing[0]}: it is truncated or not a Whisper model")
    return {name: found[name]._replace(shape=shape) for name, shape in expected.items()}


def _parse_header(reader: _Reader) -> dict:
    path = reader.path
    if reader.ints(1)[0] != GGML_MAGIC:
        raise InputError(f"{path} is not a ggml whisper file (bad magic)")
    hparams = dict(zip(_HPARAM_NAMES, reader.ints(10)))
    ftype = reader.ints(1)[0]
    weight_types = {code: name for name, code in FILE_FTYPES.items()} | {0: "f32"}
    if ftype % QUANT_VERSION_FACTOR not in weight_types:
        raise InputError(f"{path} has ggml ftype {ftype}, which wconv cannot read (known: f32, "
                         f"{', '.join(FILE_FTYPES)}); re-quantize it with whisper.cpp's quantize tool")
    filters = tuple(reader.ints(2))
    reader.skip(4 * filters[0] * filters[1])
    n_tokens = reader.ints(1)[0]
    if n_tokens > hparams["n_vocab"] or 4 * n_tokens > reader.size - reader.position:
        raise InputError(f"{path} is truncated or corrupt (a vocabulary of {n_tokens} tokens for n_vocab {hparams['n_vocab']})")
    vocab = [reader.take(reader.ints(1)[0]) for _ in range(n_tokens)]
    type_names = {code: name for name, code in TYPE_IDS.items()}
    tensors = []
    while not reader.at_end():
        n_dims, name_length, type_id = reader.ints(3)
        if not 1 <= n_dims <= 4:
            raise InputError(f"{path} is truncated or corrupt (a tensor with {n_dims} dimensions at offset {reader.position})")
        shape = tuple(reversed(reader.ints(n_dims)))
        name = reader.take(name_length).decode("utf-8", errors="replace")
        if type_id not in type_names:
            raise InputError(f"{path}: tensor {name} has ggml type {type_id}, which wconv cannot read")
        nbytes = _data_size(type_names[type_id], shape, name, path)
        tensors.append(TensorInfo(name, shape, type_names[type_id], reader.position, nbytes))
        reader.skip(nbytes)
    return {
        "hparams": hparams, "ftype": ftype, "ggml_type": weight_types[ftype % QUANT_VERSION_FACTOR],
        "filters": filters, "vocab": vocab, "tensors": tensors,
    }


def _data_size(ggml_type: str, shape: tuple[int, ...], name: str, path: Path) -> int:
    if min(shape) < 0:
        raise InputError(f"{path} is truncated or corrupt (tensor {name} has shape {list(shape)})")
    count = math.prod(shape)
    if ggml_type in _FLOAT_DTYPES:
        return count * _FLOAT_DTYPES[ggml_type].itemsize
    if shape[-1] % BLOCK_SIZE:
        raise InputError(f"{path}: tensor {name} is {ggml_type} with rows of {shape[-1]} values, not whole blocks of {BLOCK_SIZE}")
    return count // BLOCK_SIZE * _BLOCK_DTYPES[ggml_type].itemsize


class _Reader:
    """Sequential little-endian reads from an open file; reading past its end is an InputError."""

    def __init__(self, source, path: Path):
        self.source, self.path = source, path
        self.size = os.fstat(source.fileno()).st_size

    @property
    def position(self) -> int:
        return self.source.tell()

    def take(self, size: int) -> bytes:
        self._check_room(size)
        return self.source.read(size)

    def skip(self, size: int) -> None:
        self._check_room(size)
        self.source.seek(size, os.SEEK_CUR)

    def ints(self, count: int) -> list[int]:
        return list(struct.unpack(f"<{count}i", self.take(4 * count)))

    def at_end(self) -> bool:
        return self.position >= self.size

    def _check_room(self, size: int) -> None:
        if size < 0 or self.position + size > self.size:
            raise InputError(f"{self.path} is truncated or corrupt (needs {size} bytes at offset {self.position})")


def vocab_from_tiktoken(multilingual: bool) -> list[bytes]:
    """openai-whisper's BPE tokens as raw bytes in id order: 50257 (multilingual) or 50256 (gpt2, ``.en``).

    Special tokens are left out, as whisper.cpp's convert-pt-to-ggml.py does; whisper.cpp names them itself.
    """
    from whisper.tokenizer import get_encoding

    encoding = get_encoding("multilingual" if multilingual else "gpt2")
    return [encoding.decode_single_token_bytes(token) for token in range(encoding.eot_token)]


def vocab_from_hf_tokenizer(tokenizer_json_path) -> list[bytes]:
    """The BPE tokens of a Hugging Face byte-level ``tokenizer.json`` as raw bytes in id order.

    Added tokens (``<|endoftext|>`` and the other specials) are left out, so a Whisper tokenizer gives the same
    list as ``vocab_from_tiktoken`` and whisper.cpp's convert-pt-to-ggml.py.
    """
    path = Path(tokenizer_json_path)
    try:
        tokenizer = json.loads(path.read_text(encoding="utf-8"))
        model = tokenizer["model"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read a tokenizer model from {path}: {error}") from error
    if model.get("type") != "BPE":
        raise InputError(f"{path} holds a {model.get('type')} tokenizer; whisper.cpp needs byte-level BPE")
    added_ids = {token["id"] for token in tokenizer.get("added_tokens", [])}
    tokens = sorted((token_id, text) for text, token_id in model["vocab"].items() if token_id not in added_ids)
    if [token_id for token_id, _ in tokens] != list(range(len(tokens))):
        raise InputError(f"{path}: BPE token ids are not contiguous from 0")
    byte_of = _unicode_to_byte()
    try:
        return [bytes(byte_of[character] for character in text) for _, text in tokens]
    except KeyError as error:
        raise InputError(f"{path}: token character {error} is outside the GPT-2 byte-level alphabet") from error


def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other
    bytes were shifted to code points 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {chr(256 + index): byte for index, byte in enumerate(shifted)}

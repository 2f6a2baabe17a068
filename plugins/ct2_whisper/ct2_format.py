"""Read CTranslate2 Whisper model directories into openai-whisper weights.

``model.bin`` layout (little-endian, no padding), as written by ctranslate2's ``ModelSpec._serialize``:
u32 binary_version, str spec_name, u32 spec_revision, u32 variable count, then per variable
str name, u8 rank, u32 × rank shape, u8 dtype id (item size before version 4), u32 byte count
(element count before version 4) and the raw C-order data; finally u32 alias count and
(str alias, str target) pairs. A str is a u16 length that counts a trailing NUL, the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from wconv import InputError

if TYPE_CHECKING:
    from whisper.model import ModelDimensions

SUPPORTED_BINARY_VERSIONS = range(3, 7)
WHISPER_SPEC_NAME = "WhisperSpec"
_BFLOAT16_ID = 5
_DTYPE_BY_ID = {0: np.dtype(np.float32), 1: np.dtype(np.int8), 2: np.dtype(np.int16), 3: np.dtype(np.int32),
                4: np.dtype(np.float16), _BFLOAT16_ID: np.dtype(np.uint16)}  # bfloat16 as raw bits
_DTYPE_BY_ITEM_SIZE = {4: np.dtype(np.float32), 2: np.dtype(np.int16), 1: np.dtype(np.int8)}  # binary versions < 4
_REQUIRED_SCALARS = ("encoder/num_heads", "decoder/num_heads")
# Generic TransformerDecoderSpec settings; which of them a Whisper model.bin holds depends on the ctranslate2 version.
_OPTIONAL_SCALARS = ("decoder/activation", "decoder/alibi", "decoder/alibi_use_positive_positions", "decoder/scale_alibi",
                     "decoder/pre_norm", "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
                     "decoder/alignment_layer", "decoder/alignment_heads")
_PROJECTION = "decoder/projection/weight"
_EMBEDDINGS = "decoder/embeddings/weight"
_LAYER_NAME = re.compile(r"^(encoder|decoder)/layer_(\d+)/")
_MULTILINGUAL_VOCAB_SIZE = 51865  # English-only Whisper models have 51864 tokens


@dataclass
class Ct2Model:
    """The parsed contents of a ``model.bin``; aliased names map to their target's array."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


@dataclass
class Ct2Whisper:
    """A CTranslate2 Whisper model directory translated to openai-whisper dimensions and weight names."""

    dims: ModelDimensions
    state_dict: dict[str, torch.Tensor]
    alignment_heads: list[list[int]]
    config: dict
    vocabulary: list[str]
    tokenizer_json: Path | None
    is_multilingual: bool
    source_sha256: str


class _Cursor:
    """Sequential reads over the bytes of a model.bin; running past the end is an InputError."""

    def __init__(self, data: mmap.mmap | bytes, path: Path):
        self.data = data
        self.path = path
        self.offset = 0

    def skip(self, size: int, what: str) -> int:
        """Advance over ``size`` bytes of ``what``; return where they start."""
        start = self.offset
        if start + size > len(self.data):
            raise InputError(f"{self.path} is truncated: it ends at byte {len(self.data)}, inside {what} "
                             f"(needs {start + size - len(self.data)} more bytes); re-download or re-convert the model")
        self.offset += size
        return start

    def unpack(self, fmt: str, what: str):
        """One little-endian struct value."""
        return struct.unpack_from("<" + fmt, self.data, self.skip(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        """A u16-length, NUL-terminated UTF-8 string."""
        length = self.unpack("H", what)
        start = self.skip(length, what)
        return self.data[start:start + length].rstrip(b"\0").decode("utf-8", errors="replace")


def read_model_bin(path: Path | str) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 3-6).

    Arrays are read-only views over a memory map of the file; bfloat16 is converted to float32.
    """
    path = Path(path)
    return _parse_model_bin(_map_file(path), path)


def _map_file(path: Path) -> mmap.mmap | bytes:
    """The file's bytes as a read-only memory map (``mmap`` refuses empty files, which read as b"")."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _parse_model_bin(data: mmap.mmap | bytes, path: Path) -> Ct2Model:
    """Decode the records of a model.bin held in ``data``."""
    cursor = _Cursor(data, path)
    version = cursor.unpack("I", "the header")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise InputError(f"{path} declares CTranslate2 binary version {version}, wconv reads versions "
                         f"{SUPPORTED_BINARY_VERSIONS.start}-{SUPPORTED_BINARY_VERSIONS.stop - 1}: "
                         "pass a model.bin written by ct2-transformers-converter from ctranslate2 4.x")
    spec_name = cursor.string("the header")
    spec_revision = cursor.unpack("I", "the header")
    variables = {}
    for index in range(cursor.unpack("I", "the header")):
        name = cursor.string(f"the name of variable #{index}")
        variables[name] = _read_variable(cursor, name, version)
    aliases = {}
    for _ in range(cursor.unpack("I", "the alias section")):
        alias = cursor.string("the alias section")
        aliases[alias] = cursor.string("the alias section")
    for alias, target in aliases.items():
        if target not in variables:
            raise InputError(f"{path}: alias '{alias}' points to unknown variable '{target}'; re-convert the model")
        variables[alias] = variables[target]
    return Ct2Model(version, spec_name, spec_revision, variables, aliases)


def _read_variable(cursor: _Cursor, name: str, version: int) -> np.ndarray:
    """Shape, dtype and data of one variable record, the cursor being just past its name."""
    what = f"variable '{name}'"
    shape = tuple(cursor.unpack("I", what) for _ in range(cursor.unpack("B", what)))
    dtype_code = cursor.unpack("B", what)
    size_field = cursor.unpack("I", what)
    if version >= 4:
        dtype, num_bytes = _DTYPE_BY_ID.get(dtype_code), size_field
    else:
        dtype, num_bytes = _DTYPE_BY_ITEM_SIZE.get(dtype_code), size_field * dtype_code
    if dtype is None:
        raise InputError(f"{cursor.path}: {what} has unknown dtype code {dtype_code}; re-convert the model")
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != num_bytes:
        raise InputError(f"{cursor.path}: {what} declares {num_bytes} bytes for shape {shape}; "
                         "the file is corrupt, re-convert the model")
    start = cursor.skip(num_bytes, f"the data of {what}")
    array = np.frombuffer(cursor.data, dtype=dtype, count=count, offset=start).reshape(shape)
    if version >= 4 and dtype_code == _BFLOAT16_ID:
        return (array.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is the top half of a float32
    return array


@dataclass(frozen=True)
class _FusedLinear:
    """A CTranslate2 linear layer whose rows stack several openai-whisper projections (QKV or cross-attention KV)."""

    ct2: str
    parts: tuple[str, ...]


@dataclass
class _WhisperLayout:
    """Where each openai-whisper weight comes from in a CTranslate2 Whisper model of given depth."""

    direct: dict[str, str]
    fused: list[_FusedLinear]

    @classmethod
    def for_depth(cls, n_audio_layer: int, n_text_layer: int) -> _WhisperLayout:
        """The layout of an encoder and decoder with that many layers."""
        layout = cls(direct={}, fused=[])
        layout._linear("encoder/conv1", "encoder.conv1")
        layout._linear("encoder/conv2", "encoder.conv2")
        layout.direct["encoder/position_encodings/encodings"] = "encoder.positional_embedding"
        layout._norm("encoder/layer_norm", "encoder.ln_post")
        for i in range(n_audio_layer):
            layout._block(f"encoder/layer_{i}", f"encoder.blocks.{i}")
        layout.direct[_EMBEDDINGS] = "decoder.token_embedding.weight"
        layout.direct["decoder/position_encodings/encodings"] = "decoder.positional_embedding"
        layout._norm("decoder/layer_norm", "decoder.ln")
        for i in range(n_text_layer):
            ct2, openai = f"decoder/layer_{i}", f"decoder.blocks.{i}"
            layout._block(ct2, openai)
            layout._linear(f"{ct2}/attention/linear_0", f"{openai}.cross_attn.query")
            layout.fused.append(_FusedLinear(f"{ct2}/attention/linear_1",
                                             (f"{openai}.cross_attn.key", f"{openai}.cross_attn.value")))
            layout._linear(f"{ct2}/attention/linear_2", f"{openai}.cross_attn.out")
            layout._norm(f"{ct2}/attention/layer_norm", f"{openai}.cross_attn_ln")
        return layout

    def _linear(self, ct2: str, openai: str) -> None:
        self.direct[f"{ct2}/weight"] = f"{openai}.weight"
        self.direct[f"{ct2}/bias"] = f"{openai}.bias"

    def _norm(self, ct2: str, openai: str) -> None:
        self.direct[f"{ct2}/gamma"] = f"{openai}.weight"
        self.direct[f"{ct2}/beta"] = f"{openai}.bias"

    def _block(self, ct2: str, openai: str) -> None:
        """Self-attention and feed-forward parts, shared by encoder and decoder layers."""
        self.fused.append(_FusedLinear(f"{ct2}/self_attention/linear_0",
                                       tuple(f"{openai}.attn.{part}" for part in ("query", "key", "value"))))
        self._linear(f"{ct2}/self_attention/linear_1", f"{openai}.attn.out")
        self._norm(f"{ct2}/self_attention/layer_norm", f"{openai}.attn_ln")
        self._linear(f"{ct2}/ffn/linear_0", f"{openai}.mlp.0")
        self._linear(f"{ct2}/ffn/linear_1", f"{openai}.mlp.2")
        self._norm(f"{ct2}/ffn/layer_norm", f"{openai}.mlp_ln")

    def required_names(self) -> set[str]:
        """Every variable a model with this layout must hold."""
        fused = {f"{linear.ct2}/{field}" for linear in self.fused for field in ("weight", "bias")}
        return set(self.direct) | fused | {_PROJECTION, *_REQUIRED_SCALARS}

    def optional_names(self) -> set[str]:
        """Variables a model may hold: int8/int16 scales of its weights and generic decoder settings."""
        weights = {name for name in self.required_names() if name.endswith("/weight")}
        return {f"{name}_scale" for name in weights} | set(_OPTIONAL_SCALARS)


def load_ct2_whisper(model_dir: Path | str) -> Ct2Whisper:
    """Read a CTranslate2 Whisper directory (model.bin, config.json, vocabulary) as an openai-whisper state dict.

    Stored float tensors keep their dtype; int8/int16 weights are dequantized to float32.
    """
    from whisper.model import ModelDimensions

    model_dir = Path(model_dir)
    model_path, config_path = model_dir / "model.bin", model_dir / "config.json"
    if not model_dir.is_dir():
        raise InputError(f"{model_dir} is not a directory: pass a CTranslate2 Whisper model directory (model.bin, config.json)")
    if not model_path.is_file():
        raise InputError(f"{model_path} not found: pass a directory written by ct2-transformers-converter")
    if not config_path.is_file():
        raise InputError(f"{config_path} not found: copy config.json from the converted model next to model.bin")
    data = _map_file(model_path)
    model = _parse_model_bin(data, model_path)
    if model.spec_name != WHISPER_SPEC_NAME:
        raise InputError(f"{model_path} is a {model.spec_name} model, not a Whisper model: pass a converted Whisper model")
    n_audio_layer, n_text_layer = _layer_count(model, "encoder"), _layer_count(model, "decoder")
    layout = _WhisperLayout.for_depth(n_audio_layer, n_text_layer)
    _check_variable_names(model, layout, model_path)
    _check_tied_projection(model, model_path)
    state_dict = {openai: _tensor(_dequantized(model, ct2)) for ct2, openai in layout.direct.items()}
    for linear in layout.fused:
        state_dict.update(_split_fused(model, linear, model_path))

    conv1 = model.variables["encoder/conv1/weight"]
    audio_positions = model.variables["encoder/position_encodings/encodings"]
    text_positions = model.variables["decoder/position_encodings/encodings"]
    embeddings = model.variables[_EMBEDDINGS]
    try:
        dims = ModelDimensions(
            n_mels=conv1.shape[1], n_audio_ctx=audio_positions.shape[0], n_audio_state=audio_positions.shape[1],
            n_audio_head=int(model.variables["encoder/num_heads"].item()), n_audio_layer=n_audio_layer,
            n_vocab=embeddings.shape[0], n_text_ctx=text_positions.shape[0], n_text_state=embeddings.shape[1],
            n_text_head=int(model.variables["decoder/num_heads"].item()), n_text_layer=n_text_layer,
        )
    except (IndexError, ValueError) as e:
        raise InputError(f"{model_path}: the shapes of its embeddings, first convolution or head counts are not a "
                         f"Whisper model's ({e}); re-convert the model") from e
    try:
        config = json.loads(config_path.read_bytes())
        alignment_heads = [[int(layer), int(head)] for layer, head in config.get("alignment_heads") or []]
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{config_path} is not a CTranslate2 config (a JSON object; alignment_heads as [layer, head] pairs): "
                         f"{type(e).__name__}; copy it again from the converted model") from e
    if any(not (0 <= layer < dims.n_text_layer and 0 <= head < dims.n_text_head) for layer, head in alignment_heads):
        raise InputError(f"{config_path}: alignment_heads name heads outside the {dims.n_text_layer}x{dims.n_text_head} "
                         "decoder; fix or remove the alignment_heads entry")
    tokenizer_path = model_dir / "tokenizer.json"
    return Ct2Whisper(
        dims=dims, state_dict=state_dict, alignment_heads=alignment_heads, config=config,
        vocabulary=_read_vocabulary(model_dir), tokenizer_json=tokenizer_path if tokenizer_path.is_file() else None,
        is_multilingual=dims.n_vocab >= _MULTILINGUAL_VOCAB_SIZE, source_sha256=hashlib.sha256(data).hexdigest(),
    )


def _layer_count(model: Ct2Model, side: str) -> int:
    """Number of ``<side>/layer_N`` blocks (highest N + 1); gaps show up as missing variables."""
    indices = [int(match[2]) for name in model.variables if (match := _LAYER_NAME.match(name)) and match[1] == side]
    return max(indices, default=-1) + 1


def _check_variable_names(model: Ct2Model, layout: _WhisperLayout, path: Path) -> None:
    """Refuse a model whose variables differ from what ctranslate2's WhisperSpec writes."""
    present = set(model.variables)
    required = layout.required_names()
    missing = sorted(required - present)
    unexpected = sorted(present - required - layout.optional_names())
    if missing or unexpected:
        listed = "; ".join(f"{label} {_first_few(names)}"
                           for label, names in (("missing", missing), ("unexpected", unexpected)) if names)
        raise InputError(f"{path} does not have the variables of a CTranslate2 Whisper model ({listed}): "
                         "re-convert it with ct2-transformers-converter")


def _first_few(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_tied_projection(model: Ct2Model, path: Path) -> None:
    """openai-whisper computes logits with the token embedding, so the output projection must equal it."""
    if model.aliases.get(_PROJECTION) == _EMBEDDINGS:
        return
    if not np.array_equal(_dequantized(model, _PROJECTION), _dequantized(model, _EMBEDDINGS)):
        raise InputError(f"{path} has an output projection that differs from the token embedding, "
                         "which openai-whisper cannot represent: convert the original (tied) checkpoint instead")


def _dequantized(model: Ct2Model, name: str) -> np.ndarray:
    """A variable as floats: quantized weights are divided by their ``<name>_scale`` (per row, or one scalar)."""
    value = model.variables[name]
    scale = model.variables.get(f"{name}_scale")
    if scale is None:
        return value
    scale = scale.astype(np.float32)
    return value.astype(np.float32) / scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """An owned, writable torch copy of a (possibly read-only, unaligned) array."""
    return torch.from_numpy(np.array(array, copy=True))


def _split_fused(model: Ct2Model, linear: _FusedLinear, path: Path) -> dict[str, torch.Tensor]:
    """Split a fused linear into its projections; the key projection's bias slot must be zero and is dropped."""
    weight = _dequantized(model, f"{linear.ct2}/weight")
    bias = model.variables[f"{linear.ct2}/bias"]
    rows = weight.shape[0] // len(linear.parts)
    if rows * len(linear.parts) != weight.shape[0] or bias.shape != (weight.shape[0],):
        raise InputError(f"{path}: {linear.ct2} has shape {weight.shape} / bias {bias.shape}, which does not split into "
                         f"{len(linear.parts)} projections; re-convert the model")
    tensors = {}
    for index, part in enumerate(linear.parts):
        part_rows = slice(index * rows, (index + 1) * rows)
        tensors[f"{part}.weight"] = _tensor(weight[part_rows])
        if part.endswith(".key"):
            if np.any(bias[part_rows] != 0):
                raise InputError(f"{path}: {linear.ct2}/bias has a non-zero key bias, which openai-whisper has no place "
                                 "for: this model was not converted from a Whisper checkpoint")
        else:
            tensors[f"{part}.bias"] = _tensor(bias[part_rows])
    return tensors


def _read_vocabulary(model_dir: Path) -> list[str]:
    """Tokens from vocabulary.txt (one per line) or vocabulary.json (a list); empty when neither exists."""
    text_path, json_path = model_dir / "vocabulary.txt", model_dir / "vocabulary.json"
    if text_path.is_file():
        return text_path.read_text(encoding="utf-8").removesuffix("\n").split("\n")
    if json_path.is_file():
        return json.loads(json_path.read_text(encoding="utf-8"))
    return []


def alignment_heads_dump(heads: list[list[int]], n_text_layer: int, n_text_head: int) -> bytes:
    """[layer, head] pairs in openai-whisper's base85(gzip(bool mask)) form, for ``Whisper.set_alignment_heads``."""
    mask = np.zeros((n_text_layer, n_text_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))

"""A numpy reference evaluator for saved Core ML ML programs: wconv's way to run an ``.mlpackage`` on Linux.

coremltools cannot predict outside macOS, so wconv executes the saved program itself: the package is
read back into a MIL program (``coremltools.converters.mil.frontend.milproto.load``) and its ``main``
function runs op by op in numpy. It is a second, independent implementation (no torch), so agreement
with PyTorch means something.

    ev = MLProgramEvaluator.load("ggml-base-encoder.mlpackage")
    ev.input_names, ev.output_names, ev.state_names
    out = ev.predict({"logmel_data": mel})        # {output name: np.ndarray of the declared dtype}
    state = ev.make_state()                      # like Core ML's MLState, zero-initialised
    out = ev.predict(inputs, state)              # read_state / coreml_update_state use it

fp16 semantics. A tensor the program types fp16 is held as ``np.float16``; fp32 tensors stay float32.
Every op computes in float32 (fp16 operands are widened) and its result is rounded once to the
declared output dtype. For a single elementwise op this equals IEEE fp16 arithmetic; matmul, conv,
linear, einsum, reductions, softmax and the layer_norm statistics therefore accumulate in float32 and
round only their result, as Core ML's fp16 backends do. Unary elementwise ops on fp16 tensors look
the result up in a table of the op over all 65536 fp16 values (the same float32 computation, done
once). Weights stay as stored (fp16) and are widened per op; intermediates are freed after their
last consumer. Compressed weights (``constexpr_*``) are
decompressed once at load. An op outside :data:`OPS` raises :class:`UnsupportedOpError` at load.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import InputError, UnsupportedOpError

Kernel = Callable[[dict[str, Any]], Any]


def _f32(x: np.ndarray) -> np.ndarray:
    """fp16 widened to float32 for computing; every other dtype as it is."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _ints(values) -> list[int]:
    """A const tensor (or scalar) as a list of Python ints."""
    return [int(v) for v in np.ravel(values)]


def _axes(a: dict, rank: int, name: str = "axes") -> tuple[int, ...] | None:
    """The op's axes as non-negative ints, or None (all axes) when absent."""
    if a.get(name) is None:
        return None
    return tuple(axis % rank for axis in _ints(a[name]))


# ---------------------------------------------------------------------------------------- special functions

# Numerical Recipes' erfcc (Chebyshev fit): erfc(z) = t * exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0;
# relative error below 1.2e-7 in exact arithmetic, a few float32 ulps here. Highest power first.
_ERFC_COEFFICIENTS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
                      -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223)
# Maclaurin series of erf / (2 / sqrt(pi)) in x^2, used below |x| = 0.5 where 1 - erfc loses digits.
_ERF_SERIES = tuple((-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(7))


def _erfc(x: np.ndarray) -> np.ndarray:
    """Complementary error function of a float32 array (relative accuracy, also in the far tail)."""
    z = np.abs(x)
    t = np.reciprocal(0.5 * z + 1.0)
    poly = np.full_like(z, _ERFC_COEFFICIENTS[0])
    for coefficient in _ERFC_COEFFICIENTS[1:]:
        poly *= t
        poly += np.float32(coefficient)
    poly -= np.square(z, out=z)
    result = np.exp(poly, out=poly)
    result *= t
    return np.where(x < 0, 2.0 - result, result)


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function of a float32 array."""
    square = x * x
    series = np.zeros_like(x)
    for coefficient in reversed(_ERF_SERIES):
        series *= square
        series += np.float32(coefficient)
    small = np.float32(2 / math.sqrt(math.pi)) * x * series
    return np.where(np.abs(x) < 0.5, small, np.sign(x) * (1.0 - _erfc(np.abs(x))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gelu(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "EXACT":  # 0.5 x (1 + erf(x / sqrt 2)) == 0.5 x erfc(-x / sqrt 2), accurate for x << 0 too
        out = _erfc(x * np.float32(-1 / math.sqrt(2)))
        out *= x
        out *= 0.5
        return out
    if mode == "TANH_APPROXIMATION":  # 0.5 x (1 + tanh(u)) == x sigmoid(2 u), without cancellation for x << 0
        inner = np.float32(2 * math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
        return x * _sigmoid(inner)
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(np.float32(1.702) * x)
    raise ValueError(f"gelu mode '{mode}' is not one of EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION")


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


# ---------------------------------------------------------------------------------------- linear algebra

def _conv_padding(a: dict, spatial: tuple[int, ...], kernel: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial axis, as coremltools defines pad_type."""
    pad_type = str(a.get("pad_type", "valid"))
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        pad = _ints(a["pad"])
        return list(zip(pad[0::2], pad[1::2]))
    if pad_type in ("same", "same_lower"):
        totals = [max(0, s * math.ceil(i / s) - i + k - s) for i, k, s in zip(spatial, kernel, strides)]
        if pad_type == "same":
            return [(total // 2, total - total // 2) for total in totals]
        return [(total - total // 2, total // 2) for total in totals]
    raise ValueError(f"conv pad_type '{pad_type}' is not one of valid, custom, same, same_lower")


def _conv(a: dict) -> np.ndarray:
    """N-d convolution as one matmul: im2col through a strided window view (a plain reshape for 1x1 kernels)."""
    x, weight = _f32(a["x"]), _f32(a["weight"])
    rank = x.ndim - 2
    groups = int(a.get("groups", 1))
    strides = _ints(a["strides"]) if a.get("strides") is not None else [1] * rank
    dilations = _ints(a["dilations"]) if a.get("dilations") is not None else [1] * rank
    kernel = list(weight.shape[2:])
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    padding = _conv_padding(a, x.shape[2:], dilated, strides)
    if any(before or after for before, after in padding):
        x = np.pad(x, [(0, 0), (0, 0), *padding])
    batch, channels = x.shape[:2]
    if math.prod(kernel) == 1:
        columns = x[(Ellipsis, *(slice(None, None, s) for s in strides))]
        out_spatial = columns.shape[2:]
    else:
        windows = sliding_window_view(x, dilated, axis=tuple(range(2, 2 + rank)))
        windows = windows[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
                           *(slice(None, None, d) for d in dilations))]
        out_spatial = windows.shape[2:2 + rank]
        columns = windows.transpose(0, 1, *range(2 + rank, 2 + 2 * rank), *range(2, 2 + rank))
    columns = columns.reshape(batch, groups, channels // groups * math.prod(kernel), math.prod(out_spatial))
    out = np.matmul(weight.reshape(groups, weight.shape[0] // groups, -1), columns)
    out = out.reshape(batch, weight.shape[0], *out_spatial)
    if a.get("bias") is not None:
        out += _f32(a["bias"]).reshape(-1, *[1] * rank)
    return out


def _matmul(a: dict) -> np.ndarray:
    x, y = _f32(a["x"]), _f32(a["y"])
    if x.ndim > 1 and bool(a.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if y.ndim > 1 and bool(a.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _linear(a: dict) -> np.ndarray:
    out = np.matmul(_f32(a["x"]), _f32(a["weight"]).T)
    if a.get("bias") is not None:
        out += _f32(a["bias"])
    return out


def _is_matmul_form(left: str, right: str, output: str) -> bool:
    """Each label once per term, and a label missing from the output is in both operands (summed)."""
    return all(len(set(term)) == len(term) for term in (left, right, output)) \
        and not (set(left) ^ set(right)) - set(output)


def _einsum(a: dict) -> np.ndarray:
    """Two-operand einsum as one batched matmul (BLAS); other forms through np.einsum."""
    operands = [_f32(v) for v in a["values"]]
    equation = str(a["equation"]).replace(" ", "")
    inputs, output = equation.split("->")
    labels = inputs.split(",")
    if len(operands) != 2 or not _is_matmul_form(*labels, output):
        return np.einsum(equation, *operands, optimize=True)
    (left, right), (x, y) = labels, operands
    batch = [c for c in output if c in left and c in right]
    summed = [c for c in left if c in right and c not in output]
    rows = [c for c in left if c not in right]
    columns = [c for c in right if c not in left]
    size = {**dict(zip(right, y.shape)), **dict(zip(left, x.shape))}
    x = x.transpose([left.index(c) for c in batch + rows + summed])
    y = y.transpose([right.index(c) for c in batch + summed + columns])
    x = x.reshape(*x.shape[:len(batch)], math.prod(size[c] for c in rows), -1)
    y = y.reshape(*y.shape[:len(batch)], math.prod(size[c] for c in summed), -1)
    product = np.matmul(x, y)
    product = product.reshape(*product.shape[:len(batch)], *(size[c] for c in rows), *(size[c] for c in columns))
    return product.transpose([(batch + rows + columns).index(c) for c in output])


def _scaled_dot_product_attention(a: dict) -> np.ndarray:
    query, key, value = _f32(a["query"]), _f32(a["key"]), _f32(a["value"])
    scores = np.matmul(query, np.swapaxes(key, -1, -2))
    scores *= np.float32(1 / math.sqrt(query.shape[-1]))
    mask = a.get("attn_mask")
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + _f32(mask)
    return np.matmul(_softmax(scores, -1), value)


# ---------------------------------------------------------------------------------------- normalization, reduction

def _layer_norm(a: dict) -> np.ndarray:
    x = _f32(a["x"])
    axes = _axes(a, x.ndim) or tuple(range(x.ndim))
    centered = x - x.mean(axis=axes, keepdims=True)
    variance = np.square(centered).mean(axis=axes, keepdims=True)
    centered /= np.sqrt(variance + np.float32(a.get("epsilon", 1e-5)))
    normalized_shape = [size if axis in axes else 1 for axis, size in enumerate(x.shape)]
    if a.get("gamma") is not None:
        centered *= _f32(a["gamma"]).reshape(normalized_shape)
    if a.get("beta") is not None:
        centered += _f32(a["beta"]).reshape(normalized_shape)
    return centered


def _batch_norm(a: dict) -> np.ndarray:
    """Inference batch norm over channel axis 1."""
    x = _f32(a["x"])
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(_f32(a["variance"]) + np.float32(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        scale = scale * _f32(a["gamma"])
    out = (x - _f32(a["mean"]).reshape(per_channel)) * scale.reshape(per_channel)
    if a.get("beta") is not None:
        out += _f32(a["beta"]).reshape(per_channel)
    return out


def _reduction(reduce: Callable) -> Kernel:
    def kernel(a: dict) -> np.ndarray:
        x = _f32(a["x"])
        return reduce(x, axis=_axes(a, x.ndim), keepdims=bool(a.get("keep_dims", False)))
    return kernel


def _reduce_argmax(a: dict) -> np.ndarray:
    return np.argmax(a["x"], axis=int(a.get("axis", -1)), keepdims=bool(a.get("keep_dims", False)))


def _topk(a: dict):
    x, k, axis = a["x"], int(a.get("k", 1)), int(a.get("axis", -1))
    order = np.argsort(x if bool(a.get("ascending", False)) else -x, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    values = np.take_along_axis(x, indices, axis=axis)
    return (values, indices) if bool(a.get("return_indices", True)) else values


# ---------------------------------------------------------------------------------------- shapes and indexing

def _reshape(a: dict) -> np.ndarray:
    x, shape = a["x"], _ints(a["shape"])
    if len(shape) == x.ndim:  # 0 keeps that dimension of x
        shape = [size if new == 0 else new for size, new in zip(x.shape, shape)]
    return x.reshape(shape)


def _squeeze(a: dict) -> np.ndarray:
    return np.squeeze(a["x"], axis=_axes(a, a["x"].ndim))


def _concat(a: dict) -> np.ndarray:
    values, axis = [np.atleast_1d(v) for v in a["values"]], int(a["axis"])  # scalars concatenate as vectors
    if not bool(a.get("interleave", False)):
        return np.concatenate(values, axis=axis)
    axis %= values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    return stacked.reshape(*values[0].shape[:axis], -1, *values[0].shape[axis + 1:])


NUMPY_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad(a: dict) -> np.ndarray:
    """``pad`` holds (before, after) pairs for the last len(pad)/2 axes; reflect excludes the edge, like numpy's."""
    x, pairs = a["x"], _ints(a["pad"])
    widths = [(0, 0)] * (x.ndim - len(pairs) // 2) + [tuple(pairs[i:i + 2]) for i in range(0, len(pairs), 2)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(x, widths, constant_values=a.get("constant_val", 0))
    return np.pad(x, widths, mode=NUMPY_PAD_MODES[mode])


def _split(a: dict) -> tuple[np.ndarray, ...]:
    if a.get("split_sizes") is not None:
        sections = np.cumsum(_ints(a["split_sizes"]))[:-1]
    else:
        sections = int(a["num_splits"])
    return tuple(np.split(a["x"], sections, axis=int(a["axis"])))


def _slice_index(a: dict, rank: int) -> tuple:
    """numpy index of slice_by_index / slice_update: masks replace begin/end, squeeze_mask picks begin."""
    begin, end = _ints(a["begin"]), _ints(a["end"])
    stride = _ints(a["stride"]) if a.get("stride") is not None else [1] * rank
    begin_mask, end_mask, squeeze_mask = (
        [bool(m) for m in np.ravel(a[name])] if a.get(name) is not None else [False] * rank
        for name in ("begin_mask", "end_mask", "squeeze_mask"))
    index = []
    for axis in range(rank):
        start = None if begin_mask[axis] else begin[axis]
        if squeeze_mask[axis]:
            index.append(start or 0)
        else:
            index.append(slice(start, None if end_mask[axis] else end[axis], stride[axis]))
    return tuple(index)


def _slice_by_index(a: dict) -> np.ndarray:
    return a["x"][_slice_index(a, a["x"].ndim)]


def _slice_update(a: dict) -> np.ndarray:
    out = a["x"].copy()
    out[_slice_index(a, out.ndim)] = a["update"]
    return out


def _slice_by_size(a: dict) -> np.ndarray:
    x = a["x"]
    index = []
    for axis, (start, size) in enumerate(zip(_ints(a["begin"]), _ints(a["size"]))):
        start %= x.shape[axis]
        index.append(slice(start, None if size < 0 else start + size))
    return x[tuple(index)]


def _gather(a: dict) -> np.ndarray:
    x, indices = a["x"], a["indices"].astype(np.intp)
    axis, batch_dims = int(a.get("axis", 0)) % x.ndim, int(a.get("batch_dims", 0))
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    batch = x.shape[:batch_dims]
    rows = zip(x.reshape(-1, *x.shape[batch_dims:]), indices.reshape(-1, *indices.shape[batch_dims:]))
    gathered = np.stack([np.take(row, row_indices, axis=axis - batch_dims) for row, row_indices in rows])
    return gathered.reshape(*batch, *gathered.shape[1:])


def _band_part(a: dict) -> np.ndarray:
    x = a["x"]
    lower, upper = int(a.get("lower", -1)), int(a.get("upper", -1))
    rows = np.arange(x.shape[-2])[:, None]
    columns = np.arange(x.shape[-1])[None, :]
    keep = ((lower < 0) | (rows - columns <= lower)) & ((upper < 0) | (columns - rows <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


# ---------------------------------------------------------------------------------------- compressed constants

def _per_block(values: np.ndarray) -> np.ndarray:
    """(s0, s1, ...) as (s0, 1, s1, 1, ...): broadcasts one value over each block of a blocked tensor."""
    return np.asarray(values, np.float32).reshape([v for size in values.shape for v in (size, 1)])


def _blocked_shape(shape: tuple[int, ...], blocks_per_axis: tuple[int, ...]) -> list[int]:
    """Each axis split into (blocks, block size): (n0, n1), (b0, b1) -> (b0, n0 // b0, b1, n1 // b1)."""
    return [v for size, blocks in zip(shape, blocks_per_axis) for v in (blocks, size // blocks)]


def _constexpr_affine_dequantize(a: dict) -> np.ndarray:
    data, axis = a["quantized_data"], int(a["axis"]) % a["quantized_data"].ndim

    def along_axis(param):
        param = np.asarray(param, np.float32)
        return param.reshape([-1 if i == axis else 1 for i in range(data.ndim)]) if param.ndim == 1 else param

    return (data.astype(np.float32) - along_axis(a["zero_point"])) * along_axis(a["scale"])


def _constexpr_blockwise_shift_scale(a: dict) -> np.ndarray:
    data, scale = a["data"], a["scale"]
    values = data.astype(np.float32).reshape(_blocked_shape(data.shape, scale.shape))
    if a.get("offset") is not None:
        values = values - _per_block(a["offset"])
    return (values * _per_block(scale)).reshape(data.shape)


def _constexpr_lut_to_dense(a: dict) -> np.ndarray:
    """iOS16 form (bit-packed uint8 indices, one LUT, ``shape``) or iOS18 form (per-block LUTs, vectors)."""
    lut = a["lut"]
    if a.get("shape") is not None:
        shape = _ints(a["shape"])
        nbits = int(math.log2(lut.size))
        bits = np.unpackbits(a["indices"], bitorder="little")[:math.prod(shape) * nbits].reshape(-1, nbits)
        return lut[bits.astype(np.intp) @ (1 << np.arange(nbits))].reshape(shape)
    indices = a["indices"].astype(np.intp)
    rank, groups, vector_size = indices.ndim, lut.shape[:indices.ndim], lut.shape[-1]
    blocked = _blocked_shape(indices.shape, groups)
    group_index = tuple(np.arange(g).reshape([g if j == 2 * i else 1 for j in range(2 * rank)])
                        for i, g in enumerate(groups))
    values = lut[(*group_index, indices.reshape(blocked))].reshape(*indices.shape, vector_size)
    if vector_size == 1:
        return values[..., 0]
    axis = int(a["vector_axis"]) % rank
    shape = list(indices.shape)
    shape[axis] *= vector_size
    return np.moveaxis(values, -1, axis + 1).reshape(shape)


# ---------------------------------------------------------------------------------------- states

@dataclass
class _StateSlot:
    """One state tensor: ``read_state`` reads it, ``coreml_update_state`` replaces it."""

    value: np.ndarray


def _coreml_update_state(a: dict) -> np.ndarray:
    slot = a["state"]
    slot.value = np.asarray(a["value"], dtype=slot.value.dtype)
    return slot.value


# ---------------------------------------------------------------------------------------- the op table

_EVERY_FP16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)


@functools.lru_cache(maxsize=None)
def _fp16_table(fn: Callable, params: tuple) -> np.ndarray:
    """``fn(x, *params)`` for every fp16 bit pattern x, computed in float32 and rounded to fp16."""
    return fn(_EVERY_FP16.astype(np.float32), *params).astype(np.float16)


def _elementwise(fn: Callable, *param_names: str) -> Kernel:
    """Kernel of a unary elementwise op ``fn(x, *params)``.

    On fp16 tensors the op is a lookup in its table over all 65536 fp16 values: the same float32
    computation rounded to fp16, without widening the whole tensor.
    """
    def kernel(a: dict) -> np.ndarray:
        params = tuple(a[name] if isinstance(a[name], str) else a[name].item() for name in param_names)
        x = a["x"]
        if x.dtype == np.float16:
            return _fp16_table(fn, params)[x.view(np.uint16)]
        return fn(x, *params)
    return kernel


def _binary(fn: Callable) -> Kernel:
    return lambda a: fn(_f32(a["x"]), _f32(a["y"]))


OPS: dict[str, Kernel] = {
    # elementwise
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.true_divide), "floor_div": _binary(np.floor_divide), "pow": _binary(np.power),
    "maximum": _binary(np.maximum), "minimum": _binary(np.minimum),
    "greater": _binary(np.greater), "greater_equal": _binary(np.greater_equal), "less": _binary(np.less),
    "less_equal": _binary(np.less_equal), "equal": _binary(np.equal), "not_equal": _binary(np.not_equal),
    "logical_and": _binary(np.logical_and), "logical_or": _binary(np.logical_or),
    "logical_not": lambda a: np.logical_not(a["x"]),
    "abs": _elementwise(np.abs), "sqrt": _elementwise(np.sqrt), "exp": _elementwise(np.exp),
    "tanh": _elementwise(np.tanh), "square": _elementwise(np.square), "erf": _elementwise(_erf),
    "sigmoid": _elementwise(_sigmoid), "silu": _elementwise(lambda x: x * _sigmoid(x)),
    "relu": _elementwise(lambda x: np.maximum(x, np.zeros((), x.dtype))),
    "rsqrt": _elementwise(lambda x, epsilon: 1.0 / np.sqrt(x + epsilon), "epsilon"),
    "log": _elementwise(lambda x, epsilon: np.log(x + epsilon), "epsilon"),
    "clip": _elementwise(lambda x, alpha, beta: np.minimum(np.maximum(x, alpha), beta), "alpha", "beta"),
    "gelu": _elementwise(_gelu, "mode"),
    "softmax": lambda a: _softmax(_f32(a["x"]), int(a.get("axis", -1))),
    "select": lambda a: np.where(a["cond"], a["a"], a["b"]),
    "cast": lambda a: a["x"],  # the declared output dtype does the conversion
    "identity": lambda a: a["x"],
    # linear algebra
    "conv": _conv, "linear": _linear, "matmul": _matmul, "einsum": _einsum,
    "scaled_dot_product_attention": _scaled_dot_product_attention,
    # normalization and reduction
    "layer_norm": _layer_norm, "batch_norm": _batch_norm,
    "reduce_sum": _reduction(np.sum), "reduce_mean": _reduction(np.mean),
    "reduce_max": _reduction(np.max), "reduce_min": _reduction(np.min),
    "reduce_argmax": _reduce_argmax, "topk": _topk,
    # shapes and indexing
    "reshape": _reshape, "squeeze": _squeeze,
    "transpose": lambda a: np.transpose(a["x"], _ints(a["perm"])),
    "expand_dims": lambda a: np.expand_dims(a["x"], tuple(_ints(a["axes"]))),
    "concat": _concat, "split": _split, "pad": _pad, "tile": lambda a: np.tile(a["x"], _ints(a["reps"])),
    "slice_by_index": _slice_by_index, "slice_by_size": _slice_by_size, "slice_update": _slice_update,
    "gather": _gather, "gather_along_axis":
        lambda a: np.take_along_axis(a["x"], a["indices"].astype(np.intp), axis=int(a.get("axis", 0))),
    "band_part": _band_part,
    "fill": lambda a: np.full(_ints(a["shape"]), a.get("value", np.float32(0))),
    "range_1d": lambda a: np.arange(a["start"], a["end"], a["step"]),
    "shape": lambda a: np.array(a["x"].shape, dtype=np.int32),
    # states
    "read_state": lambda a: a["input"].value,
    "coreml_update_state": _coreml_update_state,
    # compressed constants, decompressed once at load
    "constexpr_lut_to_dense": _constexpr_lut_to_dense,
    "constexpr_affine_dequantize": _constexpr_affine_dequantize,
    "constexpr_blockwise_shift_scale": _constexpr_blockwise_shift_scale,
}


# ---------------------------------------------------------------------------------------- the evaluator

@dataclass
class _Step:
    """One op ready to run: its kernel, where its inputs come from, what it must produce, what dies after it."""

    op_type: str
    name: str
    kernel: Kernel
    inputs: dict[str, str | list[str]]
    outputs: list[tuple[str, np.dtype, tuple]]  # var name, declared dtype, declared shape (None: symbolic)
    release: list[str] = field(default_factory=list)


@dataclass
class _InputRule:
    """A declared input: dtype and the shapes it accepts, each a tuple of inclusive (low, high) per dimension."""

    dtype: np.dtype
    shapes: list[tuple[tuple[int, float], ...]]

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return any(len(rule) == len(shape) and all(low <= size <= high for size, (low, high) in zip(shape, rule))
                   for rule in self.shapes)

    def describe(self) -> str:
        def dim(low, high):
            return str(low) if low == high else f"{low}..{'' if high == math.inf else high}"
        return " or ".join("(" + ", ".join(dim(*bounds) for bounds in rule) + ")" for rule in self.shapes)


class EvaluatorState:
    """The state of a stateful program, like Core ML's MLState: zeros until ``coreml_update_state`` writes."""

    def __init__(self, slots: dict[str, _StateSlot]):
        self._slots = slots

    def read_state(self, name: str) -> np.ndarray:
        """A copy of the named state tensor."""
        return self._slot(name).value.copy()

    def write_state(self, name: str, value) -> None:
        """Replace the named state tensor (cast to its dtype; the shape must match)."""
        slot = self._slot(name)
        value = np.asarray(value, dtype=slot.value.dtype)
        if value.shape != slot.value.shape:
            raise InputError(f"state '{name}' has shape {slot.value.shape}, not {value.shape}")
        slot.value = value.copy()

    def _slot(self, name: str) -> _StateSlot:
        if name not in self._slots:
            raise InputError(f"unknown state '{name}': the model's states are {', '.join(self._slots)}")
        return self._slots[name]


def _np_dtype(mil_dtype) -> np.dtype:
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(mil_dtype))


def _declared_shape(var) -> tuple:
    return tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in var.shape)


def _input_rule(feature, var) -> _InputRule:
    array = feature.type.multiArrayType
    flexibility = array.WhichOneof("ShapeFlexibility")
    if flexibility == "enumeratedShapes":
        shapes = [tuple((d, d) for d in s.shape) for s in array.enumeratedShapes.shapes]
    elif flexibility == "shapeRange":
        shapes = [tuple((r.lowerBound, r.upperBound if r.upperBound >= 0 else math.inf)
                        for r in array.shapeRange.sizeRanges)]
    else:
        shapes = [tuple((d, d) if d is not None else (1, math.inf) for d in _declared_shape(var))]
    return _InputRule(_np_dtype(var.dtype), shapes)


class _ForgetfulDict(dict):
    """A dict that stores nothing."""

    def __setitem__(self, key, value):
        pass


def _load_program(path: Path):
    """The saved package as a MIL program: its spec and ``milproto.load`` over the package's weights directory.

    milproto.load keeps one memory-mapped reader per weight file for the whole load, so every weight
    is resident twice at its peak (the map and the numpy copy). Its load context is swapped for one
    that forgets readers: each weight is read through a fresh map, unmapped right after.
    """
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto_load

    class UncachedReadersContext(milproto_load.TranscriptionContext):
        def __init__(self, weights_dir=""):
            super().__init__(weights_dir)
            self.blob_reader_from_filename = _ForgetfulDict()

    if not path.is_dir() or path.suffix != ".mlpackage":
        raise InputError(f"{path} is not an .mlpackage directory" if path.exists() else f"{path} does not exist")
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as e:  # a broken package: coremltools raises several kinds
        raise InputError(f"cannot read {path}: {e}") from e
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{path} holds a {spec.WhichOneof('Type')} model, not an ML program")
    with mock.patch.object(milproto_load, "TranscriptionContext", UncachedReadersContext):
        program = milproto_load.load(spec, specification_version=spec.specificationVersion,
                                     file_weights_dir=model.weights_dir or "")
    return spec, program


class MLProgramEvaluator:
    """Runs the ``main`` function of a saved ML program in numpy (see the module docstring for fp16 semantics)."""

    def __init__(self, spec, function):
        description = spec.description
        variables = dict(function.inputs)
        self.input_names = [feature.name for feature in description.input]
        self.state_names = [feature.name for feature in description.state]
        self.output_names = [var.name for var in function.outputs]
        self._inputs = {feature.name: _input_rule(feature, variables[feature.name]) for feature in description.input}
        self._states = {}
        for name in self.state_names:
            tensor = variables[name].sym_type.wrapped_type()
            self._states[name] = (tuple(tensor.get_shape()), _np_dtype(tensor.get_primitive()))
        self._output_dtypes = {var.name: _np_dtype(var.dtype) for var in function.outputs}
        self._constants: dict[str, Any] = {}
        self._steps: list[_Step] = []
        for op in function.operations:
            if op.op_type != "const" and op.op_type not in OPS:
                raise UnsupportedOpError(op.op_type, op.name)
        for op in function.operations:
            if op.op_type == "const":
                value = op.outputs[0].val
                self._constants[op.outputs[0].name] = value if isinstance(value, str) else np.asarray(value)
                continue
            step = _Step(
                op_type=op.op_type, name=op.name, kernel=OPS[op.op_type],
                inputs={param: [v.name for v in var] if isinstance(var, (list, tuple)) else var.name
                        for param, var in op.inputs.items()},
                outputs=[(var.name, _np_dtype(var.dtype), _declared_shape(var)) for var in op.outputs])
            if op.op_type.startswith("constexpr_"):
                self._constants.update(self._run(step, self._constants))
            else:
                self._steps.append(step)
        self._plan_releases(set(self.output_names) | set(self._constants))

    @classmethod
    def load(cls, path: str | Path) -> MLProgramEvaluator:
        """Read a saved ``.mlpackage`` (InputError if it is missing or not an ML program package)."""
        spec, program = _load_program(Path(path))
        function_name = spec.description.defaultFunctionName or "main"
        return cls(spec, program.functions[function_name])

    def make_state(self) -> EvaluatorState:
        """A fresh state for this program: every state tensor zero."""
        return EvaluatorState({name: _StateSlot(np.zeros(shape, dtype)) for name, (shape, dtype) in self._states.items()})

    def predict(self, inputs: dict[str, Any], state: EvaluatorState | None = None) -> dict[str, np.ndarray]:
        """Run the program: {input name: array} (cast to the declared dtype) -> {output name: array}."""
        values: dict[str, Any] = dict(self._constants)
        values.update(self._feeds(inputs))
        if self._states:
            if state is None:
                raise InputError(f"the model has states ({', '.join(self._states)}): pass state=evaluator.make_state()")
            values.update({name: state._slot(name) for name in self._states})
        with np.errstate(all="ignore"):
            for step in self._steps:
                values.update(self._run(step, values))
                for name in step.release:
                    del values[name]
        return {name: np.array(values[name], dtype=self._output_dtypes[name]) for name in self.output_names}

    def _feeds(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        unknown = sorted(set(inputs) - set(self._inputs))
        if unknown:
            raise InputError(f"unknown input '{unknown[0]}': the model's inputs are {', '.join(self.input_names)}")
        feeds = {}
        for name, rule in self._inputs.items():
            if name not in inputs:
                raise InputError(f"missing input '{name}': the model's inputs are {', '.join(self.input_names)}")
            value = np.asarray(inputs[name], dtype=rule.dtype)
            if not rule.accepts(value.shape):
                raise InputError(f"input '{name}' has shape {value.shape}; the model expects {rule.describe()}")
            feeds[name] = value
        return feeds

    @staticmethod
    def _run(step: _Step, values: dict[str, Any]) -> dict[str, np.ndarray]:
        """Execute one op; its outputs rounded to their declared dtypes and checked against declared shapes."""
        args = {param: [values[n] for n in source] if isinstance(source, list) else values[source]
                for param, source in step.inputs.items()}
        results = step.kernel(args)
        if not isinstance(results, tuple):
            results = (results,)
        produced = {}
        for (name, dtype, shape), result in zip(step.outputs, results, strict=True):
            result = np.asarray(result)
            if result.dtype != dtype:
                result = result.astype(dtype)
            if len(result.shape) != len(shape) or any(d is not None and d != r for d, r in zip(shape, result.shape)):
                raise RuntimeError(f"evaluator bug: op '{step.name}' ({step.op_type}) produced shape {result.shape}, "
                                   f"the program declares {shape}")
            produced[name] = result
        return produced

    def _plan_releases(self, kept: set[str]) -> None:
        """After each step, drop the values no later step reads (outputs and constants stay)."""
        last_reader: dict[str, int] = {}
        for index, step in enumerate(self._steps):
            for name, *_ in step.outputs:
                last_reader[name] = index
            for source in step.inputs.values():
                for name in source if isinstance(source, list) else [source]:
                    last_reader[name] = index
        for name, index in last_reader.items():
            if name not in kept:
                self._steps[index].release.append(name)

"""wconv's numpy evaluator op by op: small MIL programs built with coremltools' builder, converted without graph
passes, saved as .mlpackage, loaded back and compared with independent numpy / PyTorch computations."""

import math
from itertools import count

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.milproto import load as milproto_load
from coremltools.converters.mil.mil import types
from coremltools.optimize._utils import pack_elements_into_bits

from wconv.errors import InputError, UnsupportedOpError
from wconv.runtime.evaluator import MLProgramEvaluator

IOS16, IOS17, IOS18 = ct.target.iOS16, ct.target.iOS17, ct.target.iOS18
MIL_DTYPES = {np.dtype(np.float32): types.fp32, np.dtype(np.float16): types.fp16, np.dtype(np.int32): types.int32}
PACKAGES = count()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def save(tmp_path, prog, target):
    """The program converted as it is (no graph passes) and saved; the package path."""
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                       pass_pipeline=ct.PassPipeline.EMPTY)
    path = tmp_path / f"program{next(PACKAGES)}.mlpackage"
    model.save(str(path))
    return path


def saved_op_types(path) -> set[str]:
    """The op types of a saved package, read back with coremltools alone."""
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    program = milproto_load.load(spec, specification_version=spec.specificationVersion,
                                 file_weights_dir=model.weights_dir)
    return {op.op_type for op in program.functions["main"].operations}


def evaluate(tmp_path, op_type, build, *inputs, target=IOS17):
    """Run ``build`` (parameters named like the program inputs) through a saved package that holds ``op_type``.

    Returns the single output, or the list of outputs in program order.
    """
    specs = [mb.TensorSpec(x.shape, MIL_DTYPES[x.dtype]) for x in inputs]
    path = save(tmp_path, mb.program(input_specs=specs, opset_version=target)(build), target)
    assert op_type in saved_op_types(path)
    evaluator = MLProgramEvaluator.load(path)
    names = build.__code__.co_varnames[:build.__code__.co_argcount]
    outputs = evaluator.predict(dict(zip(names, inputs)))
    values = [outputs[name] for name in evaluator.output_names]
    return values[0] if len(values) == 1 else values


def assert_within_fp16_ulp(actual, exact):
    """``actual`` is fp16 and at most one fp16 step away from the exact (float64) value."""
    assert actual.dtype == np.float16
    step = np.spacing(np.abs(np.asarray(exact, np.float64)).astype(np.float16)).astype(np.float64)
    assert np.all(np.abs(actual.astype(np.float64) - exact) <= step)


def like(var, value):
    """``value`` as a numpy scalar of the dtype of program variable ``var``."""
    return types.nptype_from_builtin(var.dtype)(value)


def erf(x):
    return np.vectorize(math.erf)(x.astype(np.float64))


# ---------------------------------------------------------------------------------------- elementwise

UNARY = {  # op: (builder, exact reference in float64, input domain)
    "sqrt": (lambda x: mb.sqrt(x=x), np.sqrt, "positive"),
    "rsqrt": (lambda x: mb.rsqrt(x=x, epsilon=1e-3), lambda x: 1 / np.sqrt(x + 1e-3), "positive"),
    "exp": (lambda x: mb.exp(x=x), np.exp, "any"),
    "log": (lambda x: mb.log(x=x, epsilon=1e-3), lambda x: np.log(x + 1e-3), "positive"),
    "abs": (lambda x: mb.abs(x=x), np.abs, "any"),
    "tanh": (lambda x: mb.tanh(x=x), np.tanh, "any"),
    "sigmoid": (lambda x: mb.sigmoid(x=x), lambda x: 1 / (1 + np.exp(-x)), "any"),
    "erf": (lambda x: mb.erf(x=x), erf, "any"),
    "square": (lambda x: mb.square(x=x), np.square, "any"),
    "relu": (lambda x: mb.relu(x=x), lambda x: np.maximum(x, 0), "any"),
    "silu": (lambda x: mb.silu(x=x), lambda x: x / (1 + np.exp(-x)), "any"),
    "clip": (lambda x: mb.clip(x=x, alpha=like(x, -0.5), beta=like(x, 0.7)), lambda x: np.clip(x, -0.5, 0.7), "any"),
    "identity": (lambda x: mb.identity(x=x), lambda x: x, "any"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op_type", UNARY)
def test_unary(tmp_path, rng, op_type, dtype):
    build, reference, domain = UNARY[op_type]
    x = rng.uniform(0.01, 4, (3, 17)) if domain == "positive" else rng.uniform(-4, 4, (3, 17))
    x = x.astype(dtype)
    actual = evaluate(tmp_path, op_type, lambda x: build(x), x)
    exact = reference(x.astype(np.float64))
    if dtype == np.float16:
        assert_within_fp16_ulp(actual, exact)
    else:
        np.testing.assert_allclose(actual, exact, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
def test_gelu(tmp_path, rng, mode, dtype):
    x = rng.uniform(-7, 5, (4, 33)).astype(dtype)
    actual = evaluate(tmp_path, "gelu", lambda x: mb.gelu(x=x, mode=mode), x)
    wide = torch.from_numpy(x.astype(np.float64))
    exact = {
        "EXACT": lambda: F.gelu(wide),
        "TANH_APPROXIMATION": lambda: F.gelu(wide, approximate="tanh"),
        "SIGMOID_APPROXIMATION": lambda: wide * torch.sigmoid(1.702 * wide),
    }[mode]().numpy()
    if dtype == np.float16:
        assert_within_fp16_ulp(actual, exact)
    else:
        np.testing.assert_allclose(actual, exact, rtol=1e-5, atol=1e-7)


def test_erf_and_gelu_keep_relative_accuracy_far_from_zero(tmp_path):
    x = np.array([-12, -9, -6, -3, -1e-3, -1e-20, 0, 1e-20, 1e-3, 3, 6], np.float32)
    gelu, erf_x = evaluate(tmp_path, "erf", lambda x: (mb.gelu(x=x), mb.erf(x=x)), x)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    np.testing.assert_allclose(gelu, exact, rtol=2e-5, atol=0)
    np.testing.assert_allclose(erf_x, erf(x), rtol=3e-7, atol=0)


BINARY = {  # op: (builder, numpy function)
    "add": (lambda x, y: mb.add(x=x, y=y), np.add),
    "sub": (lambda x, y: mb.sub(x=x, y=y), np.subtract),
    "mul": (lambda x, y: mb.mul(x=x, y=y), np.multiply),
    "real_div": (lambda x, y: mb.real_div(x=x, y=y), np.true_divide),
    "maximum": (lambda x, y: mb.maximum(x=x, y=y), np.maximum),
    "minimum": (lambda x, y: mb.minimum(x=x, y=y), np.minimum),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op_type", BINARY)
def test_binary_broadcasts_and_rounds_like_ieee(tmp_path, rng, op_type, dtype):
    """numpy's own fp16 arithmetic is correctly rounded for these ops, so fp16 results must match exactly."""
    build, function = BINARY[op_type]
    x = rng.uniform(-3, 3, (2, 3, 5)).astype(dtype)
    y = rng.uniform(0.5, 3, (3, 1)).astype(dtype)
    actual = evaluate(tmp_path, op_type, build, x, y)
    assert actual.dtype == dtype
    np.testing.assert_array_equal(actual, function(x, y))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pow(tmp_path, rng, dtype):
    x = rng.uniform(0.1, 3, (4, 6)).astype(dtype)
    y = rng.uniform(-2, 2, (4, 6)).astype(dtype)
    actual = evaluate(tmp_path, "pow", lambda x, y: mb.pow(x=x, y=y), x, y)
    exact = np.power(x.astype(np.float64), y.astype(np.float64))
    if dtype == np.float16:
        assert_within_fp16_ulp(actual, exact)
    else:
        np.testing.assert_allclose(actual, exact, rtol=1e-6)


INTEGER_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "floor_div": np.floor_divide,
    "maximum": np.maximum, "minimum": np.minimum,
}


@pytest.mark.parametrize("op_type", INTEGER_BINARY)
def test_int32_binary(tmp_path, rng, op_type):
    x = rng.integers(-50, 50, (3, 4)).astype(np.int32)
    y = rng.choice([-7, -3, 2, 5], (3, 4)).astype(np.int32)
    actual = evaluate(tmp_path, op_type, lambda x, y: getattr(mb, op_type)(x=x, y=y), x, y)
    assert actual.dtype == np.int32
    np.testing.assert_array_equal(actual, INTEGER_BINARY[op_type](x, y))


def test_floor_div_fp32(tmp_path, rng):
    x = rng.uniform(-9, 9, (3, 5)).astype(np.float32)
    y = rng.choice([-2.5, 1.5, 4.0], (3, 5)).astype(np.float32)
    np.testing.assert_array_equal(evaluate(tmp_path, "floor_div", lambda x, y: mb.floor_div(x=x, y=y), x, y),
                                  np.floor_divide(x, y))


COMPARISONS = {"greater": np.greater, "greater_equal": np.greater_equal, "less": np.less,
               "less_equal": np.less_equal, "equal": np.equal, "not_equal": np.not_equal}


@pytest.mark.parametrize("op_type", COMPARISONS)
def test_comparison(tmp_path, op_type):
    x = np.array([[1, 2, 3, 4], [-1, 0, 5, 2]], np.float32)
    y = np.array([2, 2, 1, 4], np.float32)
    actual = evaluate(tmp_path, op_type, lambda x, y: mb.cast(x=getattr(mb, op_type)(x=x, y=y), dtype="int32"), x, y)
    np.testing.assert_array_equal(actual, COMPARISONS[op_type](x, y).astype(np.int32))


def test_logical_ops_and_select(tmp_path):
    x = np.array([[-1, 2, 0, 4], [3, -2, 5, -6]], np.float32)
    y = np.array([[1, -2, 3, 4], [0, -1, 2, 3]], np.float32)

    def build(x, y):
        positive_x, positive_y = mb.greater(x=x, y=0.0), mb.greater(x=y, y=0.0)
        both = mb.logical_and(x=positive_x, y=positive_y)
        either = mb.logical_or(x=positive_x, y=positive_y)
        neither = mb.logical_not(x=either)
        as_int = [mb.cast(x=v, dtype="int32") for v in (both, either, neither)]
        return (*as_int, mb.select(cond=both, a=x, b=y))

    both, either, neither, selected = evaluate(tmp_path, "logical_not", build, x, y)
    np.testing.assert_array_equal(both, (x > 0) & (y > 0))
    np.testing.assert_array_equal(either, (x > 0) | (y > 0))
    np.testing.assert_array_equal(neither, ~((x > 0) | (y > 0)))
    np.testing.assert_array_equal(selected, np.where((x > 0) & (y > 0), x, y))


@pytest.mark.parametrize("source, target_dtype, expected", [
    (np.array([1.0004, -2.5, 65519.0, 7e-8], np.float32), "fp16", lambda x: x.astype(np.float16)),
    (np.array([1.7, -1.7, 2.5, -0.2], np.float32), "int32", lambda x: np.trunc(x).astype(np.int32)),
    (np.array([3, -4, 0], np.int32), "fp32", lambda x: x.astype(np.float32)),
    (np.array([3, -4, 0], np.int32), "fp16", lambda x: x.astype(np.float16)),
])
def test_cast(tmp_path, source, target_dtype, expected):
    actual = evaluate(tmp_path, "cast", lambda x: mb.cast(x=x, dtype=target_dtype), source)
    assert actual.dtype == expected(source).dtype
    np.testing.assert_array_equal(actual, expected(source))


def test_cast_bool_to_fp16(tmp_path):
    x = np.array([-1, 0, 2], np.float32)
    actual = evaluate(tmp_path, "cast", lambda x: mb.cast(x=mb.greater(x=x, y=0.0), dtype="fp16"), x)
    np.testing.assert_array_equal(actual, np.array([0, 0, 1], np.float16))


# ---------------------------------------------------------------------------------------- convolution and products

CONVS = [  # (input shape, weight shape, conv keyword arguments, torch keyword arguments)
    ((1, 4, 12), (6, 4, 3), dict(pad_type="custom", pad=[1, 1], strides=[2]), dict(padding=1, stride=2)),
    ((2, 4, 11), (6, 2, 3), dict(pad_type="valid", groups=2, dilations=[2]), dict(groups=2, dilation=2)),
    ((1, 3, 10), (5, 3, 4), dict(pad_type="same"), dict(padding="same")),
    ((1, 3, 10), (5, 3, 3), dict(pad_type="same", dilations=[3]), dict(padding="same", dilation=3)),
    ((1, 4, 1, 9), (8, 4, 1, 3), dict(pad_type="custom", pad=[0, 0, 1, 1], strides=[1, 2]), dict(padding=(0, 1), stride=(1, 2))),
    ((1, 6, 1, 7), (9, 6, 1, 1), dict(pad_type="valid"), {}),
    ((1, 6, 5, 6), (4, 3, 3, 2), dict(pad_type="custom", pad=[2, 2, 1, 1], strides=[2, 1], groups=2),
     dict(padding=(2, 1), stride=(2, 1), groups=2)),
]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_shape, w_shape, kwargs, torch_kwargs", CONVS)
def test_conv(tmp_path, rng, x_shape, w_shape, kwargs, torch_kwargs, with_bias):
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    actual = evaluate(tmp_path, "conv", lambda x: mb.conv(x=x, weight=weight, bias=bias, **kwargs), x)
    torch_conv = F.conv1d if len(x_shape) == 3 else F.conv2d
    expected = torch_conv(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                          None if bias is None else torch.from_numpy(bias).double(), **torch_kwargs).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_conv_same_padding_with_stride_puts_the_odd_pad_after(tmp_path, rng):
    x = rng.standard_normal((1, 2, 8)).astype(np.float32)
    weight = rng.standard_normal((3, 2, 4)).astype(np.float32)
    actual = evaluate(tmp_path, "conv", lambda x: mb.conv(x=x, weight=weight, pad_type="same", strides=[3]), x)
    total = 3 * math.ceil(8 / 3) - 8 + 4 - 3  # out = ceil(8 / 3) = 3 positions: pad 1 before, 2 after
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (total // 2, total - total // 2)])
    expected = F.conv1d(torch.from_numpy(padded), torch.from_numpy(weight).double(), stride=3).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_fp16_whisper_front_conv_matches_float32_within_fp16_rounding(tmp_path, rng):
    """The encoder's first convs: (1, k) 2-D kernels, padding 1, strides 1 and 2, fp16 weights."""
    x = rng.standard_normal((1, 8, 1, 40)).astype(np.float16)
    w1 = (0.2 * rng.standard_normal((16, 8, 1, 3))).astype(np.float16)
    w2 = (0.2 * rng.standard_normal((16, 16, 1, 3))).astype(np.float16)

    def build(x):
        first = mb.conv(x=x, weight=w1, pad_type="custom", pad=[0, 0, 1, 1])
        return mb.conv(x=first, weight=w2, pad_type="custom", pad=[0, 0, 1, 1], strides=[1, 2])

    actual = evaluate(tmp_path, "conv", build, x)
    first = F.conv2d(torch.from_numpy(x).float(), torch.from_numpy(w1).float(), padding=(0, 1)).half().float()
    expected = F.conv2d(first, torch.from_numpy(w2).float(), padding=(0, 1), stride=(1, 2)).numpy()
    assert actual.shape == (1, 16, 1, 20)
    assert_within_fp16_ulp(actual, expected)


def test_linear(tmp_path, rng):
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    weight = rng.standard_normal((5, 8)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    actual = evaluate(tmp_path, "linear", lambda x: mb.linear(x=x, weight=weight, bias=bias), x)
    np.testing.assert_allclose(actual, x.astype(np.float64) @ weight.T.astype(np.float64) + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape, y_shape, transpose_x, transpose_y", [
    ((2, 3, 4), (4, 5), False, False),
    ((2, 4, 3), (1, 5, 4), True, True),
    ((3, 1, 2, 6), (4, 6, 3), False, False),
    ((6,), (6, 2), False, False),
])
def test_matmul(tmp_path, rng, x_shape, y_shape, transpose_x, transpose_y):
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = rng.standard_normal(y_shape).astype(np.float32)
    actual = evaluate(tmp_path, "matmul",
                      lambda x, y: mb.matmul(x=x, y=y, transpose_x=transpose_x, transpose_y=transpose_y), x, y)
    x64 = x.astype(np.float64).swapaxes(-1, -2) if transpose_x else x.astype(np.float64)
    y64 = y.astype(np.float64).swapaxes(-1, -2) if transpose_y else y.astype(np.float64)
    np.testing.assert_allclose(actual, np.matmul(x64, y64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, x_shape, y_shape", [
    ("bkhc,bchq->bkhq", (1, 7, 1, 4), (1, 4, 1, 6)),  # the encoder's attention scores
    ("bchk,bkhq->bchq", (2, 4, 3, 7), (1, 7, 3, 6)),  # attention weights times values, batch broadcast
    ("chw,whr->chr", (3, 2, 4), (4, 2, 5)),
    ("nchw,nwhu->nchu", (2, 3, 1, 4), (2, 4, 5, 2)),  # H broadcast
])
def test_einsum(tmp_path, rng, equation, x_shape, y_shape):
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = rng.standard_normal(y_shape).astype(np.float32)
    actual = evaluate(tmp_path, "einsum", lambda x, y: mb.einsum(values=(x, y), equation=equation), x, y)
    expected = torch.einsum(equation, torch.from_numpy(x).double(), torch.from_numpy(y).double()).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_scaled_dot_product_attention(tmp_path, rng, mask):
    query = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    key = rng.standard_normal((1, 2, 7, 8)).astype(np.float32)
    value = rng.standard_normal((1, 2, 7, 4)).astype(np.float32)
    scores = rng.standard_normal((5, 7)).astype(np.float32)
    scores[:, 0] = 1  # every query keeps a key under the boolean mask

    def build(query, key, value, scores):
        attn_mask = {"none": None, "bool": mb.greater(x=scores, y=0.0), "additive": scores}[mask]
        return mb.scaled_dot_product_attention(query=query, key=key, value=value, attn_mask=attn_mask)

    actual = evaluate(tmp_path, "scaled_dot_product_attention", build, query, key, value, scores, target=IOS18)
    torch_mask = {"none": None, "bool": torch.from_numpy(scores > 0), "additive": torch.from_numpy(scores).double()}[mask]
    expected = F.scaled_dot_product_attention(*(torch.from_numpy(t).double() for t in (query, key, value)),
                                              attn_mask=torch_mask).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- fp16 accumulation

def test_fp16_reduce_sum_and_matmul_accumulate_in_float32(tmp_path, rng):
    """Integer-valued fp16 data: the float32 sums are exact, a running fp16 sum is not."""
    x = rng.integers(0, 4, (1, 4096)).astype(np.float16)
    weight = rng.integers(0, 4, (4096, 2)).astype(np.float16)
    total, product = evaluate(tmp_path, "reduce_sum",
                              lambda x: (mb.reduce_sum(x=x, axes=[1]), mb.matmul(x=x, y=weight)), x)
    exact_total = x.astype(np.float64).sum(axis=1)
    exact_product = x.astype(np.float64) @ weight.astype(np.float64)
    running_fp16_total = np.cumsum(x, axis=1, dtype=np.float16)[:, -1]
    running_fp16_product = np.cumsum(x.T * weight, axis=0, dtype=np.float16)[-1]
    assert not np.array_equal(running_fp16_total, exact_total.astype(np.float16))
    assert not np.array_equal(running_fp16_product, exact_product[0].astype(np.float16))
    np.testing.assert_array_equal(total, exact_total.astype(np.float16))
    np.testing.assert_array_equal(product, exact_product.astype(np.float16))


def test_fp16_ones_sum_to_4096_not_2048(tmp_path):
    ones = np.ones((2, 4096), np.float16)
    mean, total = evaluate(tmp_path, "reduce_mean", lambda x: (mb.reduce_mean(x=x, axes=[-1]),
                                                                 mb.reduce_sum(x=x, axes=[-1], keep_dims=True)), ones)
    assert np.cumsum(ones[0], dtype=np.float16)[-1] == 2048
    np.testing.assert_array_equal(total, np.full((2, 1), 4096, np.float16))
    np.testing.assert_array_equal(mean, np.ones(2, np.float16))


# ---------------------------------------------------------------------------------------- normalization and reduction

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(tmp_path, rng, axis, dtype):
    x = rng.uniform(-6, 6, (3, 4, 5)).astype(dtype)
    actual = evaluate(tmp_path, "softmax", lambda x: mb.softmax(x=x, axis=axis), x)
    expected = torch.softmax(torch.from_numpy(x).double(), dim=axis).numpy()
    if dtype == np.float16:
        assert_within_fp16_ulp(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("axes, affine", [([-1], True), ([1], True), ([1], False), ([1, 3], True)])
def test_layer_norm(tmp_path, rng, axes, affine, dtype):
    x = (3 + 2 * rng.standard_normal((2, 6, 1, 5))).astype(dtype)
    normalized = [x.shape[a] for a in axes]
    gamma = rng.standard_normal(normalized).astype(dtype) if affine else None
    beta = rng.standard_normal(normalized).astype(dtype) if affine else None
    epsilon = dtype(1e-3)
    actual = evaluate(tmp_path, "layer_norm",
                      lambda x: mb.layer_norm(x=x, axes=axes, gamma=gamma, beta=beta, epsilon=epsilon), x)
    wide = x.astype(np.float64)
    mean = wide.mean(axis=tuple(axes), keepdims=True)
    expected = (wide - mean) / np.sqrt(wide.var(axis=tuple(axes), keepdims=True) + float(epsilon))
    if affine:
        shape = [x.shape[i] if i in [a % 4 for a in axes] else 1 for i in range(4)]
        expected = expected * gamma.astype(np.float64).reshape(shape) + beta.astype(np.float64).reshape(shape)
    if dtype == np.float16:
        assert_within_fp16_ulp(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_batch_norm(tmp_path, rng):
    x = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
    mean, gamma, beta = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    variance = rng.uniform(0.5, 2, 3).astype(np.float32)
    actual = evaluate(tmp_path, "batch_norm", lambda x: mb.batch_norm(
        x=x, mean=mean, variance=variance, gamma=gamma, beta=beta, epsilon=1e-2), x)
    expected = F.batch_norm(torch.from_numpy(x).double(), *(torch.from_numpy(p).double() for p in (mean, variance)),
                            weight=torch.from_numpy(gamma).double(), bias=torch.from_numpy(beta).double(), eps=1e-2)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_type, function", [("reduce_mean", np.mean), ("reduce_sum", np.sum),
                                               ("reduce_max", np.max), ("reduce_min", np.min)])
@pytest.mark.parametrize("axes, keep_dims", [([1], False), ([0, -1], True), (None, False)])
def test_reductions(tmp_path, rng, op_type, function, axes, keep_dims):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    actual = evaluate(tmp_path, op_type, lambda x: getattr(mb, op_type)(x=x, axes=axes, keep_dims=keep_dims), x)
    expected = function(x.astype(np.float64), axis=None if axes is None else tuple(axes), keepdims=keep_dims)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def test_reduce_argmax_and_topk(tmp_path, rng):
    x = rng.permutation(60).reshape(3, 4, 5).astype(np.float32)

    def build(x):
        largest = mb.topk(x=x, k=2, axis=1)
        smallest = mb.topk(x=x, k=3, axis=-1, ascending=True)
        return (mb.reduce_argmax(x=x, axis=2, keep_dims=True), *largest, *smallest)

    argmax, top_values, top_indices, low_values, low_indices = evaluate(tmp_path, "topk", build, x)
    np.testing.assert_array_equal(argmax, np.argmax(x, axis=2)[..., None])
    expected_top = np.argsort(-x, axis=1)[:, :2]
    np.testing.assert_array_equal(top_indices, expected_top)
    np.testing.assert_array_equal(top_values, np.take_along_axis(x, expected_top, axis=1))
    np.testing.assert_array_equal(low_indices, np.argsort(x, axis=-1)[..., :3])
    np.testing.assert_array_equal(low_values, np.sort(x, axis=-1)[..., :3])


# ---------------------------------------------------------------------------------------- shapes and indexing

def test_reshape_transpose_expand_dims_squeeze(tmp_path, rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)

    def build(x):
        return (mb.reshape(x=x, shape=[0, -1, 2]), mb.transpose(x=x, perm=[2, 0, 1]),
                mb.expand_dims(x=x, axes=[0, -1]), mb.squeeze(x=mb.expand_dims(x=x, axes=[1, 3]), axes=[-2]),
                mb.squeeze(x=mb.reshape(x=x, shape=[1, 24, 1])))

    reshaped, transposed, expanded, squeezed, squeezed_all = evaluate(tmp_path, "squeeze", build, x)
    np.testing.assert_array_equal(reshaped, x.reshape(2, 6, 2))
    np.testing.assert_array_equal(transposed, x.transpose(2, 0, 1))
    np.testing.assert_array_equal(expanded, x[None, ..., None])
    np.testing.assert_array_equal(squeezed, x[:, None])
    np.testing.assert_array_equal(squeezed_all, x.reshape(24))


def test_concat_and_interleave(tmp_path, rng):
    x = rng.standard_normal((3, 2)).astype(np.float32)
    y = rng.standard_normal((3, 2)).astype(np.float32)
    plain, interleaved = evaluate(tmp_path, "concat", lambda x, y: (
        mb.concat(values=[x, y, x], axis=1), mb.concat(values=[x, y], axis=0, interleave=True)), x, y)
    np.testing.assert_array_equal(plain, np.concatenate([x, y, x], axis=1))
    expected = np.empty((6, 2), np.float32)
    expected[0::2], expected[1::2] = x, y
    np.testing.assert_array_equal(interleaved, expected)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_pad_like_torch(tmp_path, rng, mode):
    x = rng.standard_normal((1, 2, 7)).astype(np.float32)
    padded = evaluate(tmp_path, "pad", lambda x: mb.pad(x=x, pad=[3, 2], mode=mode, constant_val=1.5), x)
    expected = F.pad(torch.from_numpy(x), (3, 2), mode=mode, **({"value": 1.5} if mode == "constant" else {}))
    np.testing.assert_array_equal(padded, expected.numpy())


def test_split(tmp_path, rng):
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    outputs = evaluate(tmp_path, "split", lambda x: (*mb.split(x=x, num_splits=3, axis=1),
                                                     *mb.split(x=x, split_sizes=[1, 2], axis=-1)), x)
    expected = [x[:, 0:2], x[:, 2:4], x[:, 4:6], x[..., :1], x[..., 1:]]
    assert len(outputs) == len(expected)
    for actual, wanted in zip(outputs, expected):
        np.testing.assert_array_equal(actual, wanted)


def test_slice_by_index(tmp_path, rng):
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)

    def build(x):
        return (
            mb.slice_by_index(x=x, begin=[1, 0, 1], end=[3, 5, 6], stride=[1, 2, 2]),
            mb.slice_by_index(x=x, begin=[0, -2, 5], end=[2, 0, 0], stride=[1, 1, -2],
                              begin_mask=[False, False, True], end_mask=[True, True, True]),
            mb.slice_by_index(x=x, begin=[2, 1, 0], end=[3, 4, 6], squeeze_mask=[True, False, False]),
            mb.slice_by_index(x=x, begin=[-1, 0, 3], end=[0, 5, 4], squeeze_mask=[True, False, True]),
        )

    strided, masked, squeezed, both = evaluate(tmp_path, "slice_by_index", build, x)
    np.testing.assert_array_equal(strided, x[1:3, 0:5:2, 1:6:2])
    np.testing.assert_array_equal(masked, x[:, -2:, ::-2])
    np.testing.assert_array_equal(squeezed, x[2, 1:4, :])
    np.testing.assert_array_equal(both, x[-1, :, 3])


def test_slice_by_size(tmp_path, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    actual = evaluate(tmp_path, "slice_by_size", lambda x: (
        mb.slice_by_size(x=x, begin=[1, 2], size=[2, -1]), mb.slice_by_size(x=x, begin=[-2, 0], size=[1, 3])), x)
    np.testing.assert_array_equal(actual[0], x[1:3, 2:])
    np.testing.assert_array_equal(actual[1], x[2:3, 0:3])


def test_gather(tmp_path, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    indices = np.array([[2, 0], [1, 1], [0, 3]], np.int32)

    def build(x, indices):
        return (mb.gather(x=x, indices=indices, axis=1),
                mb.gather(x=x, indices=indices, axis=1, batch_dims=1),
                mb.gather(x=x, indices=np.array([2, -1], np.int32), axis=0))

    plain, batched, negative = evaluate(tmp_path, "gather", build, x, indices, target=IOS16)
    np.testing.assert_array_equal(plain, x[:, indices])
    np.testing.assert_array_equal(batched, np.stack([x[b][indices[b]] for b in range(3)]))
    np.testing.assert_array_equal(negative, x[[2, -1]])


def test_gather_along_axis(tmp_path, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    indices = np.array([[3, 0, 1], [2, 2, 0], [1, 3, 3]], np.int32)
    actual = evaluate(tmp_path, "gather_along_axis",
                      lambda x, indices: mb.gather_along_axis(x=x, indices=indices, axis=1), x, indices)
    np.testing.assert_array_equal(actual, np.array([[x[r, c] for c in row] for r, row in enumerate(indices)]))


@pytest.mark.parametrize("lower, upper", [(-1, 0), (0, -1), (1, 2), (0, 0)])
def test_band_part(tmp_path, rng, lower, upper):
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    actual = evaluate(tmp_path, "band_part", lambda x: mb.band_part(x=x, lower=lower, upper=upper), x)
    m, n = np.indices((4, 5))
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    np.testing.assert_array_equal(actual, x * keep)


def test_fill_range_tile_and_shape(tmp_path, rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)

    def build(x):
        shape = mb.shape(x=x)
        rows = mb.gather(x=shape, indices=0, axis=0)
        return (shape, mb.fill(shape=shape, value=2.5), mb.range_1d(start=1, end=mb.add(x=rows, y=6), step=3),
                mb.tile(x=x, reps=[2, 1]))

    shape, filled, counted, tiled = evaluate(tmp_path, "range_1d", build, x)
    np.testing.assert_array_equal(shape, [2, 3])
    np.testing.assert_array_equal(filled, np.full((2, 3), 2.5, np.float32))
    np.testing.assert_array_equal(counted, [1, 4, 7])
    np.testing.assert_array_equal(tiled, np.tile(x, (2, 1)))


# ---------------------------------------------------------------------------------------- states

def test_state_carries_across_predictions_and_a_new_state_starts_at_zero(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec((1, 4), types.fp16), mb.StateTensorSpec((1, 4), types.fp16)],
                opset_version=IOS18)
    def prog(x, accumulator):
        total = mb.add(x=mb.read_state(input=accumulator), y=x)
        mb.coreml_update_state(state=accumulator, value=total)
        return mb.mul(x=total, y=np.float16(2))

    evaluator = MLProgramEvaluator.load(save(tmp_path, prog, IOS18))
    assert (evaluator.input_names, evaluator.state_names) == (["x"], ["accumulator"])
    x = np.array([[1, 2, 3, 0.5]], np.float16)
    state = evaluator.make_state()
    first = evaluator.predict({"x": x}, state)[evaluator.output_names[0]]
    second = evaluator.predict({"x": x}, state=state)[evaluator.output_names[0]]
    np.testing.assert_array_equal(first, 2 * x)
    np.testing.assert_array_equal(second, 4 * x)
    np.testing.assert_array_equal(state.read_state("accumulator"), 2 * x)
    fresh = evaluator.make_state()
    np.testing.assert_array_equal(evaluator.predict({"x": x}, fresh)[evaluator.output_names[0]], 2 * x)
    fresh.write_state("accumulator", np.full((1, 4), 10, np.float32))
    np.testing.assert_array_equal(evaluator.predict({"x": x}, fresh)[evaluator.output_names[0]], 2 * (10 + x))
    with pytest.raises(InputError, match="state"):
        evaluator.predict({"x": x})


def test_slice_update_writes_a_cache_position_held_in_state(tmp_path):
    """The stateful decoder's pattern: write one column of a cache state at a position given as input."""
    @mb.program(input_specs=[mb.TensorSpec((2, 1), types.fp16), mb.TensorSpec((1,), types.int32),
                             mb.StateTensorSpec((2, 6), types.fp16)], opset_version=IOS18)
    def prog(column, position, cache):
        begin = mb.concat(values=[np.array([0], np.int32), position], axis=0)
        end = mb.add(x=begin, y=np.array([2, 1], np.int32))
        updated = mb.slice_update(x=mb.read_state(input=cache), update=column, begin=begin, end=end)
        mb.coreml_update_state(state=cache, value=updated)
        return mb.reduce_sum(x=updated, axes=[1])

    path = save(tmp_path, prog, IOS18)
    assert "slice_update" in saved_op_types(path)
    evaluator = MLProgramEvaluator.load(path)
    state = evaluator.make_state()
    expected = np.zeros((2, 6), np.float16)
    for position, value in [(0, 1.5), (3, -2.0), (5, 4.0)]:
        column = np.array([[value], [2 * value]], np.float16)
        sums = evaluator.predict({"column": column, "position": np.array([position], np.int32)}, state)
        expected[:, position] = column[:, 0]
        np.testing.assert_array_equal(sums[evaluator.output_names[0]], expected.sum(axis=1))
    np.testing.assert_array_equal(state.read_state("cache"), expected)


# ---------------------------------------------------------------------------------------- compressed weights

def test_constexpr_lut_to_dense_ios16_unpacks_lsb_first(tmp_path, rng):
    lut = np.array([-1.5, 0.25, 2.0, 8.0], np.float16)
    indices = rng.integers(0, 4, 6 * 5).astype(np.uint8)
    packed = pack_elements_into_bits(indices, 2)
    x = rng.standard_normal((2, 6)).astype(np.float16)

    def build(x):
        weight = mb.constexpr_lut_to_dense(indices=packed, lut=lut, shape=np.array([6, 5], np.uint32))
        return mb.matmul(x=x, y=weight)

    actual = evaluate(tmp_path, "constexpr_lut_to_dense", build, x, target=IOS16)
    dense = lut[indices].reshape(6, 5)
    assert_within_fp16_ulp(actual, x.astype(np.float64) @ dense.astype(np.float64))


def test_constexpr_lut_to_dense_ios18_per_group_and_vector_tables(tmp_path, rng):
    grouped_indices = rng.integers(0, 16, (4, 6)).astype(types.np_uint4_dtype)
    grouped_lut = rng.standard_normal((2, 1, 16, 1)).astype(np.float16)  # rows 0-1 and 2-3 have their own table
    vector_indices = rng.integers(0, 4, (2, 3)).astype(types.np_uint2_dtype)
    vector_lut = rng.standard_normal((1, 1, 4, 2)).astype(np.float16)  # each index picks 2 values along axis 0
    x = np.ones((1, 4), np.float16)

    def build(x):
        grouped = mb.constexpr_lut_to_dense(indices=grouped_indices, lut=grouped_lut)
        vector = mb.constexpr_lut_to_dense(indices=vector_indices, lut=vector_lut, vector_axis=0)
        return mb.mul(x=grouped, y=mb.reshape(x=x, shape=[4, 1])), mb.mul(x=vector, y=mb.reshape(x=x, shape=[4, 1]))

    grouped, vector = evaluate(tmp_path, "constexpr_lut_to_dense", build, x, target=IOS18)
    expected_grouped = np.array([[grouped_lut[r // 2, 0, grouped_indices[r, c], 0] for c in range(6)] for r in range(4)])
    expected_vector = np.array([[vector_lut[0, 0, vector_indices[r // 2, c], r % 2] for c in range(3)] for r in range(4)])
    np.testing.assert_array_equal(grouped, expected_grouped)
    np.testing.assert_array_equal(vector, expected_vector)


def test_constexpr_affine_dequantize(tmp_path, rng):
    quantized = rng.integers(-128, 128, (6, 4)).astype(np.int8)
    zero_point = np.array([0, 3, -5, 1], np.int8)
    scale = np.array([0.5, 0.25, 0.125, 2.0], np.float32)
    x = rng.standard_normal((2, 6)).astype(np.float32)

    def build(x):
        weight = mb.constexpr_affine_dequantize(quantized_data=quantized, zero_point=zero_point, scale=scale, axis=1)
        return mb.matmul(x=x, y=weight)

    actual = evaluate(tmp_path, "constexpr_affine_dequantize", build, x, target=IOS16)
    dense = (quantized.astype(np.float64) - zero_point) * scale
    np.testing.assert_allclose(actual, x.astype(np.float64) @ dense, rtol=1e-5, atol=1e-5)


def test_constexpr_blockwise_shift_scale(tmp_path, rng):
    data = rng.integers(-8, 8, (4, 6)).astype(types.np_int4_dtype)
    offset = rng.integers(-2, 2, (2, 3)).astype(types.np_int4_dtype)
    scale = rng.uniform(0.1, 1, (2, 3)).astype(np.float16)
    bytes_data = rng.integers(0, 256, (4, 6)).astype(np.uint8)
    row_scale = rng.uniform(0.01, 0.1, (4, 1)).astype(np.float32)
    x = np.ones((4, 1), np.float32)

    def build(x):
        int4 = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset)
        uint8 = mb.constexpr_blockwise_shift_scale(data=bytes_data, scale=row_scale)
        return mb.mul(x=mb.cast(x=int4, dtype="fp32"), y=x), mb.mul(x=uint8, y=x)

    int4, uint8 = evaluate(tmp_path, "constexpr_blockwise_shift_scale", build, x, target=IOS18)
    blocks = (np.repeat(np.repeat(a, 2, axis=0), 2, axis=1) for a in (scale.astype(np.float64), offset))
    block_scale, block_offset = blocks
    np.testing.assert_array_equal(int4, ((data - block_offset) * block_scale).astype(np.float16))
    np.testing.assert_allclose(uint8, bytes_data * row_scale.astype(np.float64), rtol=1e-6)


@pytest.mark.parametrize("compress", ["palettize", "linear_quantize"])
def test_weights_compressed_by_ct_optimize(tmp_path, rng, compress):
    """coremltools' own compression; the reference decompresses with coremltools' implementation."""
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((3, 64), types.fp32)], opset_version=IOS18)
    def prog(x):
        return mb.linear(x=x, weight=weight)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS18,
                       compute_precision=ct.precision.FLOAT32)
    if compress == "palettize":
        config = ct.optimize.coreml.OptimizationConfig(ct.optimize.coreml.OpPalettizerConfig(mode="uniform", nbits=4))
        model = ct.optimize.coreml.palettize_weights(model, config)
    else:
        config = ct.optimize.coreml.OptimizationConfig(ct.optimize.coreml.OpLinearQuantizerConfig(dtype="int8"))
        model = ct.optimize.coreml.linear_quantize_weights(model, config)
    path = tmp_path / "compressed.mlpackage"
    model.save(str(path))

    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    spec = loaded.get_spec()
    program = milproto_load.load(spec, specification_version=spec.specificationVersion,
                                 file_weights_dir=loaded.weights_dir)
    (constexpr,) = [op for op in program.functions["main"].operations if op.op_type.startswith("constexpr_")]
    dense = constexpr.materialized_val_inference().astype(np.float64)
    assert np.abs(dense - weight).max() < 0.5  # really the compressed weight, not something else

    evaluator = MLProgramEvaluator.load(path)
    actual = evaluator.predict({"x": x})[evaluator.output_names[0]]
    np.testing.assert_allclose(actual, x.astype(np.float64) @ dense.T, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- loading and inputs

def test_an_unsupported_op_fails_at_load_naming_type_and_op(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec((3,), types.fp32)], opset_version=IOS17)
    def prog(x):
        return mb.sin(x=mb.add(x=x, y=1.0), name="the_sine")

    path = save(tmp_path, prog, IOS17)
    with pytest.raises(UnsupportedOpError) as raised:
        MLProgramEvaluator.load(path)
    assert (raised.value.op_type, raised.value.op_name) == ("sin", "the_sine")
    assert "'sin'" in str(raised.value) and "'the_sine'" in str(raised.value)


def test_an_op_dropped_from_the_table_is_unsupported(tmp_path, monkeypatch):
    from wconv.runtime import evaluator

    @mb.program(input_specs=[mb.TensorSpec((3,), types.fp32)], opset_version=IOS17)
    def prog(x):
        return mb.softmax(x=x, name="probabilities")

    path = save(tmp_path, prog, IOS17)
    monkeypatch.delitem(evaluator.OPS, "softmax")
    with pytest.raises(UnsupportedOpError, match="'softmax'.*'probabilities'"):
        MLProgramEvaluator.load(path)


def test_load_rejects_missing_and_non_package_paths(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        MLProgramEvaluator.load(tmp_path / "absent.mlpackage")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(InputError, match="not an .mlpackage"):
        MLProgramEvaluator.load(tmp_path / "model.bin")


def test_inputs_are_cast_to_their_declared_dtype_and_checked(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec((2, 3), types.fp16)], opset_version=IOS17)
    def prog(x):
        return mb.mul(x=x, y=np.float16(1))

    evaluator = MLProgramEvaluator.load(save(tmp_path, prog, IOS17))
    x = np.array([[1.0001, 2, 3], [4, 5, 6]], np.float64)
    out = evaluator.predict({"x": x})[evaluator.output_names[0]]
    np.testing.assert_array_equal(out, x.astype(np.float16))
    with pytest.raises(InputError, match=r"input 'x' has shape \(3, 2\); the model expects \(2, 3\)"):
        evaluator.predict({"x": x.T})
    with pytest.raises(InputError, match="missing input 'x'"):
        evaluator.predict({})
    with pytest.raises(InputError, match="unknown input 'y'"):
        evaluator.predict({"x": x, "y": x})


def test_enumerated_input_shapes(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec((2, 5), types.fp32)], opset_version=IOS17)
    def prog(x):
        return mb.reduce_sum(x=x, axes=[1])

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS17,
                       pass_pipeline=ct.PassPipeline.EMPTY)
    spec = model.get_spec()
    for length in (5, 3):
        spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes.add().shape.extend([2, length])
    path = tmp_path / "enumerated.mlpackage"
    ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True).save(str(path))

    evaluator = MLProgramEvaluator.load(path)
    short = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(evaluator.predict({"x": short})[evaluator.output_names[0]], short.sum(axis=1))
    with pytest.raises(InputError, match=r"expects \(2, 5\) or \(2, 3\)"):
        evaluator.predict({"x": np.zeros((2, 4), np.float32)})


def test_outputs_are_copies_the_caller_may_change(tmp_path):
    table = np.arange(6, dtype=np.float32)

    @mb.program(input_specs=[mb.TensorSpec((4,), types.fp32)], opset_version=IOS17)
    def prog(x):
        return mb.identity(x=x), mb.reshape(x=table, shape=[2, 3])

    evaluator = MLProgramEvaluator.load(save(tmp_path, prog, IOS17))
    x = np.arange(4, dtype=np.float32)
    for output in evaluator.predict({"x": x}).values():
        output[...] = -1
    echoed, reshaped = (evaluator.predict({"x": x})[name] for name in evaluator.output_names)
    np.testing.assert_array_equal(x, np.arange(4))
    np.testing.assert_array_equal(echoed, np.arange(4))
    np.testing.assert_array_equal(reshaped, table.reshape(2, 3))

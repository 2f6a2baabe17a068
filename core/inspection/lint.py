"""A static, heuristic ANE lint: which ops of an ML program meet the Neural Engine's published constraints.

Nothing here runs on a Neural Engine. Apple publishes no complete list of what the ANE runs; each rule
below is the constraint one source states, checked on the types and shapes the program declares. Core ML
decides the real placement when it compiles the model on a device (:mod:`wconv.inspection.compute_plan`
shows it on macOS 14.4+). An op may break several rules; ``rules`` lists them all, ``rule`` the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .program import Op, Program

# Rule ids, in the order an op's first broken rule is reported.
FP32 = "fp32"
RANK = "rank>4"
DIMENSION = "dim>16384"
DYNAMIC = "dynamic-shape"
OP_TYPE = "op-type"
RULES = (FP32, RANK, DIMENSION, DYNAMIC, OP_TYPE)

# fp32: the ANE computes in fp16. coremltools' "Typed Execution" guide: an ML program typed float 32
# "will execute on a combination of the GPU and CPU" (apple.github.io/coremltools/docs-guides/source/typed-execution.html);
# the seed guide §1.2 "FP16 Only: FP32 operations fall back to GPU/CPU". Integer and bool index arithmetic
# (positions, masks) is not judged: it is a handful of scalars Core ML places as it likes.
FP32_TYPES = ("fp32", "fp64")

# rank>4: the ANE's layout is the 4-D channels-first (B, C, 1, S): apple/ml-ane-transformers
# "Principle 1: Picking the Right Data Format" (reference/layer_norm.py expects rank len('BC1S')) and the seed
# guide §1.2 "ANE needs 4D channels-first format". (Core AI's 2026 guidance allows rank 5: a rank-5 op is a risk.)
MAX_RANK = 4

# dim>16384: whisper.cpp's models/convert-whisper-to-coreml.py splits the logits into vocabulary chunks because
# "ANE can only load tensors with dim size of at most 16,384"; a gather from a larger table breaks it too.
MAX_DIMENSION = 16384

# dynamic-shape: the seed guide's op table ("Dynamic Reshape ❌ Use static shapes") and §1.2 ("EnumeratedShapes safer
# for ANE"); coremltools' "Flexible Input Shapes" guide: enumerated shapes let Core ML specialise the model per shape,
# a range (ct.RangeDim) does not. Flagged: a shape the program leaves unknown when an input takes a range (or when no
# input is flexible, so the shape depends on data), and a shape-making argument that is not a constant.
SHAPE_ARGUMENTS = {"reshape": "shape", "tile": "reps", "fill": "shape", "expand_dims": "axes", "squeeze": "axes",
                   "slice_by_size": "size", "pad": "pad", "transpose": "perm"}

# op-type: what the ANE runs, from the seed guide's op table (Linear as Conv2d, LayerNorm, GELU, Softmax, SDPA from
# iOS 18, einsum in the split-head patterns, transpose, gather), apple/ml-ane-transformers' reference modules (1x1
# conv, einsum 'bchq,bkhc->bkhq' / 'bkhq,bchk->bchq', softmax, layer norm, elementwise residuals), the ops
# coremltools' ANE-motivated passes emit (int16 casts for gather indices: the add_int16_cast pass; batch_norm/
# layer_norm fusions), and elementwise arithmetic and tensor plumbing that these models are built from. Stateful
# models' state ops (iOS 18) are assumed to stay with the ops around them. Anything else is flagged.
ANE_OP_TYPES = frozenset({
    "conv", "conv_transpose", "linear", "matmul", "einsum", "scaled_dot_product_attention",
    "layer_norm", "batch_norm", "instance_norm", "l2_norm", "local_response_norm",
    "softmax", "gelu", "relu", "silu", "sigmoid", "tanh", "leaky_relu", "elu", "softplus", "clip", "erf",
    "add", "sub", "mul", "real_div", "maximum", "minimum", "pow", "sqrt", "rsqrt", "exp", "log", "abs", "square", "inverse",
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "select", "cast", "identity",
    "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_l2_norm",
    "transpose", "reshape", "squeeze", "expand_dims", "concat", "split", "slice_by_index", "slice_by_size",
    "pad", "tile", "gather", "avg_pool", "max_pool", "upsample_nearest_neighbor", "upsample_bilinear",
    "read_state", "write_state", "coreml_update_state", "slice_update",
})
WEIGHT_PARAMETERS = {"conv": "weight", "conv_transpose": "weight", "linear": "weight"}  # a kernel computed at run time falls off


@dataclass(frozen=True)
class OpVerdict:
    """One op of the program and the rules it breaks (none: eligible)."""

    op: str
    type: str
    rules: tuple[str, ...]
    flops: int

    @property
    def eligible(self) -> bool:
        return not self.rules


@dataclass(frozen=True)
class Lint:
    """Every op's verdict, in program order."""

    verdicts: list[OpVerdict]

    @property
    def total_ops(self) -> int:
        return len(self.verdicts)

    @property
    def eligible_ops(self) -> int:
        return sum(verdict.eligible for verdict in self.verdicts)

    @property
    def eligible_flops_fraction(self) -> float:
        total = sum(verdict.flops for verdict in self.verdicts)
        return sum(verdict.flops for verdict in self.verdicts if verdict.eligible) / total if total else 1.0

    def ineligible(self) -> list[dict]:
        return [{"op": v.op, "type": v.type, "rule": v.rules[0], "rules": list(v.rules)} for v in self.verdicts if not v.eligible]

    def to_dict(self) -> dict:
        """The ``ane`` object of ``wconv inspect --json``."""
        return {"static_heuristic": True, "eligible_ops": self.eligible_ops, "total_ops": self.total_ops,
                "eligible_ops_fraction": round(self.eligible_ops / self.total_ops, 4) if self.total_ops else 1.0,
                "eligible_flops_fraction": round(self.eligible_flops_fraction, 4), "ineligible": self.ineligible()}

    def summary(self) -> dict:
        """What a manifest records: the counts and how many ops break each rule."""
        by_rule = {rule: sum(rule in v.rules for v in self.verdicts) for rule in RULES}
        counts = {key: value for key, value in self.to_dict().items() if key != "ineligible"}
        return {**counts, "ineligible_by_rule": {rule: n for rule, n in by_rule.items() if n}}


def computing_ops(program: Program) -> list[Op]:
    """The ops that compute at run time: not constants, not the ``constexpr_*`` weight decompression."""
    return [op for op in program.ops if op.type != "const" and not op.type.startswith("constexpr_")]


def lint_program(program: Program) -> Lint:
    """Check every computing op of ``program`` against the rules above."""
    boundary = {value.name for value in program.inputs} | set(program.output_names)
    data_dependent = any(kind == "range" for kind in program.flexible_inputs.values()) or not program.flexible_inputs
    decompressed = {value.name for op in program.ops if op.type.startswith("constexpr_") for value in op.outputs}
    verdicts = []
    for op in computing_ops(program):
        inputs = [program.values[name] for names in op.inputs.values() for name in names if name in program.values]
        tensors = [value for value in [*inputs, *op.outputs] if value.dtype != "string"]
        broken = []
        io_cast = op.type == "cast" and any(name in boundary for name in [*op.inputs.get("x", []), op.outputs[0].name])
        if not io_cast and any(value.dtype in FP32_TYPES for value in op.outputs):
            broken.append(FP32)
        if any(len(value.shape) > MAX_RANK for value in tensors):
            broken.append(RANK)
        if any(d is not None and d > MAX_DIMENSION for value in tensors for d in value.shape):
            broken.append(DIMENSION)
        shape_argument = program.argument(op, SHAPE_ARGUMENTS[op.type]) if op.type in SHAPE_ARGUMENTS else None
        if (shape_argument is not None and not shape_argument.const) or (data_dependent and not all(v.static for v in op.outputs)):
            broken.append(DYNAMIC)
        weight = program.argument(op, WEIGHT_PARAMETERS[op.type]) if op.type in WEIGHT_PARAMETERS else None
        if op.type not in ANE_OP_TYPES or (weight is not None and not (weight.const or weight.name in decompressed)):
            broken.append(OP_TYPE)
        verdicts.append(OpVerdict(op.name, op.type, tuple(broken), op_flops(program, op)))
    return Lint(verdicts)


def op_flops(program: Program, op: Op) -> int:
    """Multiply-adds count 2; an elementwise, normalisation or data-movement op counts one per output element."""
    if not op.outputs:  # write_state
        return 0
    output = op.outputs[0]
    if op.type in ("conv", "conv_transpose"):
        weight = program.argument(op, "weight")
        return 2 * output.elements * math.prod(d or 1 for d in weight.shape[1:]) if weight else output.elements
    if op.type in ("matmul", "linear"):
        x = program.argument(op, "x")
        transposed = program.argument(op, "transpose_x")
        inner = x.shape[-2] if transposed is not None and transposed.data and transposed.data[0] else x.shape[-1]
        return 2 * output.elements * (inner or 1)
    if op.type == "einsum":
        equation = program.argument(op, "equation")
        operands = [program.values[name] for name in op.inputs.get("values", [])]
        if equation is not None and equation.data and len(operands) == 2:
            sizes = {}
            for letters, value in zip(equation.data[0].split("->")[0].split(","), operands):
                sizes.update({letter: d or 1 for letter, d in zip(letters, value.shape)})
            return 2 * math.prod(sizes.values())
    if op.type == "scaled_dot_product_attention":
        query, key = program.argument(op, "query"), program.argument(op, "key")
        return 4 * query.elements * (key.shape[-2] or 1)
    return output.elements

"""An ML program read from its specification alone: ops, the type and shape of every value, which values
are constants. No weight is loaded (a large-v3 encoder reads in a second), so it works on any package,
compressed or not, from wconv or from any other converter."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

# Bits per element of the MIL storage types (MIL_pb2.DataType names); BOOL is stored as a byte.
_BITS_IN_NAME = re.compile(r"(\d+)$")
_DTYPE_NAMES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "BFLOAT16": "bf16", "BOOL": "bool", "STRING": "string"}


def dtype_bits(dtype: str) -> int:
    """Bits per element of a dtype as :func:`dtype_name` spells it (``fp16`` 16, ``uint4`` 4, ``bool`` 8)."""
    if dtype == "bool":
        return 8
    found = _BITS_IN_NAME.search(dtype)
    return int(found.group(1)) if found else 0


def dtype_name(proto_dtype: int) -> str:
    from coremltools.proto import MIL_pb2

    name = MIL_pb2.DataType.Name(proto_dtype)
    return _DTYPE_NAMES.get(name, name.lower())


@dataclass(frozen=True)
class Value:
    """A named value of the program: dtype, shape (None for a dimension unknown until run time), where it comes from."""

    name: str
    dtype: str
    shape: tuple
    const: bool = False
    in_weight_file: bool = False  # a const stored in the package's weight file (not inline in the spec)
    data: tuple = ()  # an inline const's values (ints, floats, bools or strings)

    @property
    def static(self) -> bool:
        return all(d is not None for d in self.shape)

    @property
    def elements(self) -> int:
        return math.prod(d or 1 for d in self.shape)

    @property
    def nbytes(self) -> int:
        return math.ceil(self.elements * dtype_bits(self.dtype) / 8)

    @property
    def is_float(self) -> bool:
        return self.dtype in ("fp16", "fp32", "fp64", "bf16")


@dataclass
class Op:
    """One operation: its type, name (its first output's name when it has none), inputs by parameter, outputs."""

    type: str
    name: str
    inputs: dict[str, list[str]]
    outputs: list[Value]


@dataclass
class Program:
    """The default function of an ML program: inputs, states, ops in order, every value by name."""

    specification_version: int
    inputs: list[Value]
    states: list[Value]
    output_names: list[str]
    ops: list[Op]
    values: dict[str, Value] = field(default_factory=dict)
    flexible_inputs: dict[str, str] = field(default_factory=dict)  # input name -> "enumerated" or "range"

    def consumers(self) -> dict[str, list[Op]]:
        """Value name -> the ops that read it."""
        readers: dict[str, list[Op]] = {}
        for op in self.ops:
            for names in op.inputs.values():
                for name in names:
                    readers.setdefault(name, []).append(op)
        return readers

    def argument(self, op: Op, param: str) -> Value | None:
        names = op.inputs.get(param)
        return self.values.get(names[0]) if names else None


def _shape(tensor_type) -> tuple:
    return tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tensor_type.dimensions)


def _value(named, const: bool = False, attribute=None) -> Value:
    return _typed_value(named.name, named.type, const, attribute)


def _typed_value(name: str, value_type, const: bool = False, content=None) -> Value:
    """A Value from a MIL ValueType and, for a constant, its content (inline values or a place in the weight file)."""
    kind = value_type.WhichOneof("type")
    tensor = value_type.stateType.wrappedType.tensorType if kind == "stateType" else value_type.tensorType
    in_file, data = False, ()
    if content is not None:
        in_file = content.WhichOneof("value") == "blobFileValue"
        if not in_file:
            data = _inline_values(content.immediateValue.tensor)
    return Value(name, dtype_name(tensor.dataType), _shape(tensor), const, in_file, data)


def _inline_values(tensor) -> tuple:
    for kind in ("ints", "floats", "bools", "strings", "longInts", "doubles"):
        if tensor.HasField(kind):
            return tuple(getattr(tensor, kind).values)
    return ()


def read_program(path: Path) -> Program:
    """The default function of the ML program in the ``.mlpackage`` at ``path`` (InputError if it is none)."""
    import coremltools as ct

    path = Path(path)
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as e:  # coremltools raises several kinds for a broken or foreign package
        raise InputError(f"cannot read {path} as a Core ML package: {e}") from e
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{path} holds a {spec.WhichOneof('Type')} model, not an ML program: wconv inspects ML programs only")
    functions = spec.mlProgram.functions
    function = functions.get(spec.description.defaultFunctionName or "main") or next(iter(functions.values()))
    block = function.block_specializations[function.opset]
    states = [_value(named) for named in function.inputs if named.type.WhichOneof("type") == "stateType"]
    inputs = [_value(named) for named in function.inputs if named.type.WhichOneof("type") != "stateType"]
    program = Program(spec.specificationVersion, inputs, states, list(block.outputs), [])
    program.values.update({value.name: value for value in [*inputs, *states]})
    for feature in spec.description.input:
        array = feature.type.multiArrayType
        flexibility = array.WhichOneof("ShapeFlexibility")
        if flexibility:
            program.flexible_inputs[feature.name] = "enumerated" if flexibility == "enumeratedShapes" else "range"
    for op in block.operations:
        const = op.type == "const"
        outputs = [_value(named, const, op.attributes.get("val") if const else None) for named in op.outputs]
        program.values.update({value.name: value for value in outputs})
        if const:
            program.ops.append(Op("const", outputs[0].name, {}, outputs))
            continue
        inputs = {}
        for param, argument in op.inputs.items():  # an inline argument becomes a constant of its own
            inputs[param] = []
            for index, binding in enumerate(argument.arguments):
                name = binding.name if binding.WhichOneof("binding") == "name" else f"{op.outputs[0].name}.{param}.{index}"
                if binding.WhichOneof("binding") == "value":
                    program.values[name] = _typed_value(name, binding.value.type, True, binding.value)
                inputs[param].append(name)
        for param, attribute in op.attributes.items():  # iOS 16's constexpr ops hold their data as attributes
            if param != "name":
                name = f"{op.outputs[0].name}.{param}"
                program.values[name] = _typed_value(name, attribute.type, True, attribute)
                inputs[param] = [name]
        name = op.attributes["name"].immediateValue.tensor.strings.values[0] if "name" in op.attributes else op.outputs[0].name
        program.ops.append(Op(op.type, name, inputs, outputs))
    return program

"""Compress a converted fp16 ML program with coremltools' own compression passes.

Which weights: every constant that feeds a ``conv`` / ``linear`` / ``matmul`` as its weight (the
tied token embedding also feeds a ``gather``: it is included) with more than
:data:`MIN_ELEMENTS` elements. Biases, LayerNorm affines and the positional embeddings (consumed
by ``add`` / ``gather`` only) stay fp16. Those weights are listed by :func:`compressible_weights`
under their MIL const names, and compressed through ``op_name_configs`` so that nothing else is
touched, whatever coremltools' own default selection (any const > 2048 elements) would take.

A mixed-bit recipe names weights the openai-whisper way (``encoder.blocks.0.mlp.0.weight``,
``decoder.token_embedding.weight``): one recipe covers the whisper.cpp encoder, WhisperKit's
AudioEncoder and both decoder variants, whose MIL const names differ. :func:`weight_names` finds
each canonical tensor's MIL const(s) by value (the query weight is stored pre-scaled by
``head_dim**-0.5``; the token embedding is split into vocabulary chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..job import target_rank
from .specs import INT4_BLOCK_SIZE, CompressionSpec, read_recipe

MIN_ELEMENTS = 2048  # coremltools' default weight_threshold: compress tensors with more elements
WEIGHT_CONSUMERS = {"conv": "weight", "linear": "weight", "matmul": "y", "conv_transpose": "weight"}
ALSO_ALLOWED_CONSUMERS = {"gather"}  # the tied token embedding: a look-up table and the logits kernel
FP16 = (None, 16)
IOS_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18")  # spec_target's names
EMBEDDING_MIN_BITS = 8  # uniform specs keep the token embedding (also the logits' projection) at least this wide


def _load_mlmodel(mlmodel_or_path):
    import coremltools as ct

    if isinstance(mlmodel_or_path, (str, Path)):
        return ct.models.MLModel(str(mlmodel_or_path), skip_model_load=True)
    return mlmodel_or_path


def mil_program(mlmodel):
    """The MIL program of an ML program model (the in-memory one after ``ct.convert``, else loaded from its spec)."""
    from coremltools.converters.mil.frontend.milproto import load as milproto_load

    if hasattr(mlmodel, "functions"):  # already a MIL program
        return mlmodel
    mlmodel = _load_mlmodel(mlmodel)
    if getattr(mlmodel, "_mil_program", None) is not None:
        return mlmodel._mil_program
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"--compress: the model is a {spec.WhichOneof('Type')}, not an ML program")
    return milproto_load.load(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)


def _main_function(program):
    return program.functions.get("main") or next(iter(program.functions.values()))


def _is_weight_const(op, min_elements: int) -> bool:
    if op.op_type != "const":
        return False
    value = op.outputs[0].val
    if not isinstance(value, np.ndarray) or value.dtype not in (np.float16, np.float32) or value.size <= min_elements:
        return False
    as_weight = False
    for child in op.outputs[0].child_ops:
        param = WEIGHT_CONSUMERS.get(child.op_type)
        if param is not None and child.inputs.get(param) is op.outputs[0]:
            as_weight = True
        elif child.op_type not in ALSO_ALLOWED_CONSUMERS:
            return False
    return as_weight


def embedding_tables(program) -> set[str]:
    """The compressible consts a ``gather`` reads: the token embedding, whose rows are also the logits' projection."""
    return {name for name in compressible_weights(program)
            if any(child.op_type == "gather" for op in _main_function(program).operations if op.name == name
                   for child in op.outputs[0].child_ops)}


def compressible_weights(mlmodel_or_program, min_elements: int = MIN_ELEMENTS) -> dict[str, tuple[int, ...]]:
    """``{MIL const name: shape}`` of the weights :func:`compress` compresses, in program order."""
    program = mlmodel_or_program if hasattr(mlmodel_or_program, "functions") else mil_program(mlmodel_or_program)
    return {op.name: tuple(op.outputs[0].val.shape) for op in _main_function(program).operations
            if _is_weight_const(op, min_elements)}


def _const_values(program, names) -> dict[str, np.ndarray]:
    wanted = set(names)
    return {op.name: op.outputs[0].val for op in _main_function(program).operations if op.name in wanted}


def weight_names(mlmodel_or_program, state_dict: dict, min_elements: int = MIN_ELEMENTS) -> dict[str, list[str]]:
    """``{canonical weight name: [MIL const names]}`` for the compressible weights of a converted model.

    Matched by value on a sample of elements, up to one scale factor (coremltools folds the
    attention's ``head_dim**-0.5`` into the query weight); a weight split into row chunks (the
    token embedding, chunked for the ANE) maps to every chunk. Flattened order is the same in
    the canonical tensors and the ANE kernels, so a match is positional.
    """
    return {name: [part.const for part in parts] for name, parts in match_weights(mlmodel_or_program, state_dict, min_elements).items()}


@dataclass(frozen=True)
class ConstPart:
    """Where a MIL const sits in a canonical tensor: ``const == scale * canonical.flat[offset : offset + size]``."""

    const: str
    offset: int
    size: int
    scale: float
    shape: tuple


def match_weights(mlmodel_or_program, state_dict: dict, min_elements: int = MIN_ELEMENTS) -> dict[str, list[ConstPart]]:
    """:func:`weight_names` with each const's offset (elements) and scale in the canonical tensor."""
    program = mlmodel_or_program if hasattr(mlmodel_or_program, "functions") else mil_program(mlmodel_or_program)
    consts = _const_values(program, compressible_weights(program, min_elements))
    by_size: dict[int, list[str]] = {}
    flat: dict[str, np.ndarray] = {}
    for name, tensor in state_dict.items():
        array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        if array.dtype.kind != "f" or array.size <= min_elements:
            continue
        flat[name] = array.reshape(-1)
        by_size.setdefault(array.size, []).append(name)
    sample = np.linspace(0, 1, 257)[:-1]
    mapping: dict[str, list[ConstPart]] = {}
    for const_name, value in consts.items():
        values = value.reshape(-1).astype(np.float32)
        found = None
        for name in by_size.get(values.size, []):
            scale = _scale_if_same(values, flat[name], 0, sample)
            if scale is not None:
                found = (name, 0, scale)
                break
        if found is None and value.ndim >= 2:  # a row chunk of a bigger tensor (the token embedding)
            rows, row_size = value.shape[0], values.size // value.shape[0]
            for name, array in flat.items():
                shape = np.shape(state_dict[name])
                if len(shape) != 2 or shape[1] != row_size or shape[0] <= rows:
                    continue
                for first_row in [k * rows for k in range(shape[0] // rows)] + [shape[0] - rows]:
                    scale = _scale_if_same(values, array, first_row * row_size, sample)
                    if scale is not None:
                        found = (name, first_row * row_size, scale)
                        break
                if found is not None:
                    break
        if found is not None:
            name, offset, scale = found
            mapping.setdefault(name, []).append(ConstPart(const_name, offset, values.size, scale, tuple(value.shape)))
    return mapping


def _scale_if_same(values: np.ndarray, reference: np.ndarray, offset: int, sample: np.ndarray) -> float | None:
    """The factor c with ``values == c * fp16(reference[offset:])`` on a sample of positions, else None."""
    if offset + values.size > reference.size:
        return None
    positions = (sample * values.size).astype(np.int64)
    mine = values[positions].astype(np.float64)
    theirs = reference[offset + positions].astype(np.float16).astype(np.float64)
    norm = float(theirs @ theirs)
    if norm == 0.0:
        return 1.0 if np.all(mine == 0) else None
    scale = float(mine @ theirs) / norm
    if scale <= 0 or np.max(np.abs(mine - scale * theirs)) > 2e-3 * np.max(np.abs(mine)) + 1e-7:
        return None
    exponent = round(math.log2(scale))  # coremltools folds power-of-two scales (head_dim ** -0.5 for 64-wide heads)
    return float(2.0**exponent) if abs(scale / 2.0**exponent - 1) < 1e-3 else scale


def spec_target(mlmodel) -> str:
    """The coremltools target name of a model's specification version (iOS15 ... iOS18)."""
    version = _load_mlmodel(mlmodel).get_spec().specificationVersion
    names = [name for name in IOS_TARGETS if target_rank(name) <= version]
    return names[-1] if names else "iOS15"


def _palettizer(bits: int, group_size: int | None, workers: int):
    import coremltools.optimize.coreml as cto

    granularity = "per_grouped_channel" if group_size else "per_tensor"
    extra = {"group_size": group_size, "channel_axis": 0} if group_size else {}
    return cto.OpPalettizerConfig(mode="kmeans", nbits=int(bits), granularity=granularity, weight_threshold=0,
                                  num_kmeans_workers=workers, **extra)


def _int8():
    import coremltools.optimize.coreml as cto

    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0)


def layer_configs(spec: CompressionSpec, weights: dict[str, tuple], recipe: dict[str, Any] | None = None,
                  group_size: int | None = None, workers: int = 1, embeddings: set[str] = frozenset()) -> dict[str, Any]:
    """``op_name_configs`` for :func:`compress`: MIL const name -> coremltools op config (None: keep fp16).

    Uniform specs below 8 bits keep the token ``embeddings`` at 8 bits (int8 for int4, an 8-bit
    palette for palettes): those rows are also the projection that makes the logits, and at 6 bits
    they alone flip tokens of Whisper base. A mixed recipe gives them what their sensitivity asks.
    """
    import coremltools.optimize.coreml as cto

    if spec.method == "int8":
        return {name: _int8() for name in weights}
    if spec.method == "int4":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                             block_size=INT4_BLOCK_SIZE, weight_threshold=0)
        return {name: _int8() if name in embeddings else config for name in weights}
    if spec.method == "palette":
        config = _palettizer(spec.bits, spec.group_size, workers)
        widest = _palettizer(max(spec.bits, EMBEDDING_MIN_BITS), spec.group_size, workers)
        return {name: widest if name in embeddings else config for name in weights}
    if recipe is None:
        raise ValueError(f"--compress {spec.text} needs a recipe (wconv.compress.mixed.search)")
    configs = {}
    for name, bits in recipe.items():
        if name not in weights:
            raise ValueError(f"recipe layer {name} is not a compressible weight")
        if bits not in FP16:
            configs[name] = _palettizer(bits, group_size, workers)
    return configs


def resolve_recipe(recipe_layers: dict[str, Any], weights: dict[str, tuple], state_dict: dict | None = None,
                   program=None, source: str = "recipe") -> dict[str, Any]:
    """A recipe's ``{name: bits}`` over MIL const names of this model.

    Names may be MIL const names or canonical weight names (then ``state_dict`` is needed to find
    them). A canonical name of a weight that is in the checkpoint but not in this artifact (the
    decoder's, compressing the encoder) is skipped; a name found nowhere is an InputError.
    """
    canonical = weight_names(program, state_dict) if state_dict is not None else {}
    resolved: dict[str, Any] = {}
    for name, bits in recipe_layers.items():
        if name in weights:
            resolved[name] = bits
        elif name in canonical:
            resolved.update({const: bits for const in canonical[name]})
        elif state_dict is not None and name in state_dict:
            continue
        else:
            some = ", ".join(list(canonical or weights)[:3])
            raise InputError(f"--compress {source}: layer '{name}' is not a compressible weight of this model "
                               f"(these are named like {some})")
    return resolved


def compress(mlmodel, spec: CompressionSpec | str, recipe: dict[str, Any] | None = None, *,
             state_dict: dict | None = None, workers: int = 1):
    """The model with its compressible weights compressed as ``spec`` says, a new ``ct.models.MLModel``.

    ``recipe``: ``{weight name: bits}`` for ``mixed`` (from :func:`wconv.compress.mixed.search`)
    or a recipe dict / the ``recipe`` spec's file; names as in :func:`resolve_recipe`.
    Raises InputError for an already compressed model or a recipe naming unknown layers, and
    ValueError when the model's deployment target is below ``spec.min_target`` (raise it at
    convert time).
    """
    import coremltools.optimize.coreml as cto

    from .specs import parse_spec, recipe_min_target

    if isinstance(spec, str):
        spec = parse_spec(spec)
    mlmodel = _load_mlmodel(mlmodel)
    program = mil_program(mlmodel)
    if is_compressed(program):
        raise InputError(f"--compress {spec.text}: the model is already compressed (it has constexpr ops); "
                           "compress the fp16 model")
    group_size = spec.group_size
    source = spec.text
    if spec.method == "recipe" and recipe is None:
        recipe = read_recipe(spec.recipe_path)
    if isinstance(recipe, dict) and isinstance(recipe.get("layers"), dict):
        group_size = recipe.get("group_size")
        recipe = recipe["layers"]
    needed = spec.min_target
    if recipe is not None:
        needed = max(needed, recipe_min_target({"layers": recipe, "group_size": group_size}), key=target_rank)
    have = spec_target(mlmodel)
    if target_rank(have) < target_rank(needed):
        raise ValueError(f"--compress {spec.text} needs minimum target {needed}; the model was converted for {have}")
    weights = compressible_weights(program)
    if recipe is not None:
        recipe = resolve_recipe(recipe, weights, state_dict, program, source)
    configs = layer_configs(spec, weights, recipe, group_size, workers, embedding_tables(program))
    if not configs:
        return mlmodel
    config = cto.OptimizationConfig(global_config=None, op_name_configs=configs)
    if spec.method in ("int8", "int4"):
        return cto.linear_quantize_weights(mlmodel, config=config)
    return cto.palettize_weights(mlmodel, config=config)


def _spec_operations(spec) -> list:
    """Every operation (nested blocks included) of an ML program spec, without loading weights."""
    operations = []

    def walk(block):
        for op in block.operations:
            operations.append(op)
            for nested in op.blocks:
                walk(nested)

    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            walk(block)
    return operations


def op_census(mlmodel_or_path) -> dict[str, int]:
    """``{op type: count}`` over a model's program (a path reads only the spec, not the weights)."""
    from collections import Counter

    if hasattr(mlmodel_or_path, "functions"):
        ops = [op.op_type for function in mlmodel_or_path.functions.values() for op in function.operations]
        return dict(Counter(ops))
    model = _load_mlmodel(mlmodel_or_path)
    return dict(Counter(op.type for op in _spec_operations(model.get_spec())))


def is_compressed(mlmodel_or_path) -> bool:
    """Whether a model (MLModel, MIL program or .mlpackage path) holds compressed weights (constexpr ops)."""
    return any(op_type.startswith("constexpr_") for op_type in op_census(mlmodel_or_path))


def weight_bytes(path: str | Path) -> int:
    """Bytes of a saved .mlpackage's weight files (``Data/com.apple.CoreML/weights``)."""
    from ..files import tree_size

    return tree_size(Path(path) / "Data" / "com.apple.CoreML" / "weights")

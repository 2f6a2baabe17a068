"""What a converted model holds: its weights (bytes by layer and by storage, bits per weight), its op census,
the memory it needs when loaded, and the numbers that drive its first-load (ANE compile) cost."""

from __future__ import annotations

import math
import re
from collections import Counter

from .lint import computing_ops
from .program import Program

_LAYER_INDEX = re.compile(r"^(?:p_)?(.*?(?:blocks|layers|layer|h))_(\d+)_")
_GENERIC_NAME = re.compile(r"^(?:mul|add|sub|const|op|var|cast|concat|transpose|reshape)_\d+")


def weights(program: Program) -> list[dict]:
    """Every stored weight (a float constant in the weight file, or a ``constexpr_*`` decompression's result),
    in program order: name, shape, storage (``fp16``, ``int8``, ``lut4``, ``sparse``…), stored bytes, elements."""
    readers = program.consumers()
    decompressions = [op for op in program.ops if op.type.startswith("constexpr_")]
    stored_inside = {name for op in decompressions for names in op.inputs.values() for name in names}
    found = []
    for op in program.ops:
        if op.type == "const":
            value = op.outputs[0]
            if value.in_weight_file and value.is_float and value.name not in stored_inside and value.name in readers:
                found.append({"name": value.name, "shape": list(value.shape), "storage": value.dtype,
                              "bytes": value.nbytes, "elements": value.elements})
        elif op.type.startswith("constexpr_") and not any(reader.type.startswith("constexpr_") for reader in readers.get(op.outputs[0].name, [])):
            value = op.outputs[0]
            storage, stored = _decompressed_storage(program, op, decompressions)
            found.append({"name": value.name, "shape": list(value.shape), "storage": storage, "bytes": stored,
                          "elements": value.elements})
    return found


def _decompressed_storage(program: Program, op, decompressions) -> tuple[str, int]:
    """The storage label of a constexpr chain ending at ``op`` and the bytes its stored constants take."""
    producers = {value.name: producer for producer in decompressions for value in producer.outputs}
    labels, stored, pending, seen = [], 0, [op], set()
    while pending:
        current = pending.pop()
        labels.append(_storage_label(program, current))
        for names in current.inputs.values():
            for name in names:
                if name in producers and name not in seen:
                    seen.add(name)
                    pending.append(producers[name])
                elif (value := program.values.get(name)) is not None and value.in_weight_file:
                    stored += value.nbytes
    return "+".join(dict.fromkeys(label for label in labels if label)), stored


def _storage_label(program: Program, op) -> str:
    """``lut<bits>``, ``int8``/``int4``/``uint8``…, ``sparse`` or ``fp16`` for one constexpr op."""
    if "sparse" in op.type and "lut" not in op.type and "shift_scale" not in op.type:
        return "sparse"
    if "lut" in op.type:
        indices, lut = program.argument(op, "indices"), program.argument(op, "lut")
        if indices is not None and indices.dtype.startswith("uint") and int(indices.dtype[4:]) < 8:
            bits = int(indices.dtype[4:])
        else:  # iOS 16: indices packed into bytes, the table has 2^bits entries
            entries = lut.shape[0] if len(lut.shape) == 1 else lut.shape[-2]
            bits = int(math.log2(entries or 2))
        return f"lut{bits}" + ("+sparse" if "sparse" in op.type else "")
    data = program.argument(op, "quantized_data") or program.argument(op, "data")
    if data is not None and not data.is_float:
        return data.dtype
    source = program.argument(op, "source_val")
    return source.dtype if source is not None else ""


def layer_of(name: str) -> str:
    """``decoder.blocks.3`` for a name carrying a block index, else the name itself (``p_`` and dtype suffix dropped)."""
    match = _LAYER_INDEX.match(name)
    if match:
        return f"{match.group(1).replace('_', '.')}.{match.group(2)}"
    return re.sub(r"_to_fp(16|32)$", "", name.removeprefix("p_"))


def weight_summary(program: Program) -> dict:
    """The ``weights`` object of ``wconv inspect``: bytes, bits per weight, by storage and by layer.

    Layers come from the weights' names: a name with a block index (``..._blocks_3_...``) names its block;
    coremltools' generic names (``mul_12_weight_0``, a fused query weight) belong to the next named block in
    program order (the last one when none follows). A heuristic: another converter's names may group differently.
    """
    found = weights(program)
    layers = [layer_of(entry["name"]) if not _GENERIC_NAME.match(entry["name"]) else None for entry in found]
    indexed = [layer if layer and _LAYER_INDEX.match(entry["name"]) else None for layer, entry in zip(layers, found)]
    following = None
    for position in reversed(range(len(found))):  # generic names take the next indexed layer
        following = indexed[position] or following
        if layers[position] is None:
            layers[position] = following
    previous = None
    for position, layer in enumerate(layers):  # ... or the last one before them
        layers[position] = layer or previous or "other"
        previous = indexed[position] or previous
    by_layer, by_storage = Counter(), Counter()
    for layer, entry in zip(layers, found):
        by_layer[layer] += entry["bytes"]
        by_storage[entry["storage"]] += entry["bytes"]
    total, elements = sum(by_storage.values()), sum(entry["elements"] for entry in found)
    return {"bytes": total, "tensors": len(found), "elements": elements,
            "bits_per_weight": round(8 * total / elements, 3) if elements else None,
            "by_storage": dict(by_storage.most_common()), "by_layer": dict(by_layer)}


def op_census(program: Program) -> dict[str, int]:
    """``{op type: count}`` of the ops that compute (constants and weight decompression left out), most common first."""
    return dict(Counter(op.type for op in computing_ops(program)).most_common())


def peak_activation_bytes(program: Program) -> int:
    """The most bytes of intermediate values alive at once when the ops run in program order (declared shapes;
    an unknown dimension counts 1)."""
    values = program.values
    last_use: dict[str, int] = {}
    ops = computing_ops(program)
    for index, op in enumerate(ops):
        for names in op.inputs.values():
            for name in names:
                if name in values and not values[name].const:
                    last_use[name] = index
    alive, peak = 0, 0
    ends: Counter = Counter()
    for index, op in enumerate(ops):
        produced = sum(value.nbytes for value in op.outputs if value.name in last_use or value.name in program.output_names)
        alive += produced
        peak = max(peak, alive)
        for value in op.outputs:
            if value.name in last_use:
                ends[last_use[value.name]] += value.nbytes
        alive -= ends.pop(index, 0)
    return peak


def memory(program: Program, weight_bytes: int) -> dict:
    """Estimated resident bytes once loaded: weights as stored + the peak of intermediate values + the IO the
    caller passes + states. ``kv_cache_bytes`` is the part of IO and states that is a decoder's KV cache."""
    io = sum(value.nbytes for value in program.inputs) + sum(program.values[name].nbytes for name in program.output_names if name in program.values)
    states = sum(value.nbytes for value in program.states)
    kv_cache = sum(value.nbytes for value in [*program.inputs, *program.states]
                   if "cache" in value.name and len(value.shape) >= 3)
    activations = peak_activation_bytes(program)
    return {"weights_bytes": weight_bytes, "activations_bytes": activations, "io_bytes": io, "state_bytes": states,
            "kv_cache_bytes": kv_cache, "resident_bytes": weight_bytes + activations + io + states}


def first_load(program: Program) -> dict:
    """Numbers that drive the first load's on-device (ANE) compile time: ops, distinct op signatures, attention splits.

    Reports, not predictions: whisper.cpp#773 and #937 (medium takes over half an hour on an M1 Pro, minutes on an
    M2 Air), argmax-oss-swift#309 (large-v3 turbo: 440 s on an M4 Pro, 560 s on an M2 Pro, later loads 3-5 s) show
    that graphs split per attention head compile slowly, above all on A14/M1-generation Neural Engines.
    """
    ops = computing_ops(program)
    signatures = {(op.type, tuple(tuple(program.values[n].shape) for names in op.inputs.values() for n in names if n in program.values),
                   tuple(value.shape for value in op.outputs)) for op in ops}
    return {"ops": len(ops), "distinct_op_shapes": len(signatures),
            "attention_softmax_ops": sum(op.type == "softmax" for op in ops),
            "einsum_ops": sum(op.type == "einsum" for op in ops)}

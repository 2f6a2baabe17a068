"""Compression of Core AI assets (``--layout coreai --compress SPEC``): a plugin whose ``wconv_compress`` runs
coreai-opt's weight passes on the converted Core AI program, as the default plugin runs ``ct.optimize.coreml`` on
Core ML programs, and leaves every other artifact to it.

| SPEC | coreai-opt |
|---|---|
| ``int8`` | ``quantize_weights``, symmetric int8 per output channel |
| ``int4`` | ``quantize_weights``, symmetric int4 per block of 32 input channels |
| ``palette8|6|4|2`` | ``palettize_weights``, a k-means table per tensor |
| ``palette8|6|4|2gN`` | ``palettize_weights``, a k-means table per group of N output channels |

coreai-opt's passes are imported only here, when a Core AI compression runs. It pulls torchao, which coremltools
then imports too: their import-time log lines are held back with coremltools' own (:data:`wconv.console.QUIET_LOGGERS`).
"""

from __future__ import annotations

import json
import os

from ..conversion.coreai import CoreAIModel, float_dtype, is_aimodel
from ..errors import InputError
from ..hookspecs import hookimpl
from ..runtime.coreai import EXTRA_HINT
from .apply import MIN_ELEMENTS
from .defaults import METADATA_KEY
from .specs import INT4_BLOCK_SIZE, CompressionSpec, parse_spec

PALETTE_WIDTHS = (8, 6, 4, 2)  # coreai-torch packs 2, 4, 6 and 8-bit indices: a 3-bit table fails in pack_uintx
MAPPED = "int8, int4, palette8|6|4|2 or palette8|6|4|2gN"


def refusal(spec: CompressionSpec) -> str | None:
    """Why ``--layout coreai`` cannot honour a spec, or None when coreai-opt's passes can."""
    if spec.method in ("mixed", "recipe"):
        return ("the mixed-bit search measures and applies coremltools' palettes on Core ML programs, "
                f"not Core AI's: use {MAPPED}, or --layout coreml")
    if spec.method == "palette" and spec.bits not in PALETTE_WIDTHS:
        return f"coreai-torch stores {', '.join(map(str, sorted(PALETTE_WIDTHS)))}-bit palette indices only: use {MAPPED}"
    return None


def check_spec(text: str) -> None:
    """Refuse in one line, before anything is loaded, a spec this layout cannot honour or a missing coreai-opt."""
    spec = parse_spec(text)
    if why := refusal(spec):
        raise InputError(f"--compress {spec.text} is not available for --layout coreai: {why}")
    try:
        import coreai_opt  # noqa: F401  (the package only: its passes load torchao, imported when they run)
    except ImportError:
        raise InputError(f"--compress with --layout coreai needs coreai-opt (not installed): {EXTRA_HINT}") from None


def compress_program(program, spec: CompressionSpec):
    """A compressed copy of a Core AI program: each weight of more than 2048 elements that only convolutions, matmuls
    and ``gather_nd`` read (not the token embedding, which a ``gather_along_axis`` reads too; coreai-opt also skips a
    weight its blocks do not divide, e.g. int4 on the encoder's 80 mel inputs)."""
    import coreai_opt.coreai_utils as passes

    granularity = passes.CompressionGranularity
    if spec.method in ("int8", "int4"):
        dtype = passes.DType.INT8 if spec.method == "int8" else passes.DType.INT4
        blocks = dict(granularity=granularity.PER_BLOCK, block_size=INT4_BLOCK_SIZE) if spec.method == "int4" else {}
        return passes.quantize_weights(program, dtype, weight_num_threshold=MIN_ELEMENTS, **blocks)
    groups = dict(granularity=granularity.PER_GROUPED_CHANNEL, group_size=spec.group_size) if spec.group_size else {}
    return passes.palettize_weights(program, None, n_bits=spec.bits, weight_num_threshold=MIN_ELEMENTS,
                                    num_kmeans_workers=min(4, os.cpu_count() or 1), **groups)


@hookimpl
def wconv_compress(mlmodel, model, artifact, job):
    if job.compress is None or not is_aimodel(artifact):
        return None
    spec = parse_spec(job.compress)
    compressed = CoreAIModel(compress_program(mlmodel.program, spec))
    record = {"spec": spec.text, "method": spec.method, "tool": "coreai-opt", "uncompressed_bits": float_dtype(artifact).itemsize * 8}
    compressed.user_defined_metadata[METADATA_KEY] = json.dumps(record)
    return compressed

"""What a compressed artifact's manifest entry says: the spec, bytes and bits per weight before and after,
each check's metric for the compressed and the uncompressed model side by side, and the recipe (also
written beside the artifact as ``<name>.recipe.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import tree_size
from ..job import Check
from .apply import weight_bytes

CHECK_METRICS = ("psnr", "token_error_rate")


def recipe_filename(package: Path) -> str:
    return f"{package.name.removesuffix('.mlpackage')}.recipe.json"


def compression_entry(package: Path, uncompressed: Path, checks: list[Check], uncompressed_checks: list[Check]) -> dict:
    """The ``compression`` record of a saved compressed model (``.mlpackage`` or ``.aimodel``) and the same model
    uncompressed; writes its recipe beside it."""
    record = stored_record(package)
    after, before = stored_weight_bytes(package), stored_weight_bytes(uncompressed)
    record.update(weight_bytes=after, uncompressed_weight_bytes=before, size_ratio=round(after / before, 4),
                  bits_per_weight=round(record.get("uncompressed_bits", 16) * after / before, 3))
    record["checks"] = [side_by_side(check, baseline) for check, baseline in zip(checks, uncompressed_checks)]
    if "recipe" in record:
        record["recipe_file"] = recipe_filename(package)
        (package.parent / record["recipe_file"]).write_text(json.dumps(record["recipe"], indent=2) + "\n")
    return record


def stored_record(path: Path) -> dict:
    """What the compress stage recorded in a saved model's metadata (``wconv.compression``)."""
    from .defaults import METADATA_KEY

    if path.suffix == ".aimodel":
        from ..runtime.coreai import asset_metadata

        metadata = asset_metadata(path)
    else:
        import coremltools as ct

        metadata = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
    return json.loads(metadata.get(METADATA_KEY, "{}"))


def stored_weight_bytes(path: Path) -> int:
    """An ``.mlpackage``'s weight files, or a whole ``.aimodel`` (its weights live in the program file, beside a graph
    of some kilobytes)."""
    return tree_size(path) if path.suffix == ".aimodel" else weight_bytes(path)


def side_by_side(check: Check, baseline: Check) -> dict:
    """One check's metrics for the compressed artifact and, as ``uncompressed_<metric>``, for the fp16 one."""
    row = {"method": check.method}
    for metric in CHECK_METRICS:
        if metric in check.metrics:
            row[metric] = check.metrics[metric]
            row[f"uncompressed_{metric}"] = baseline.metrics.get(metric)
    return row

"""Core ML's own placement of each op (``ct.models.compute_plan.MLComputePlan``, macOS 14.4+), beside the lint.

The plan needs a compiled model and Core ML itself, so it exists only on a Mac; elsewhere :func:`compute_plan`
says why it is missing. Ops are matched to the lint's by their first output's name (an op whose name the
compiled model does not keep is left out of the comparison).
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from pathlib import Path

from .lint import Lint

MIN_MACOS = (14, 4)  # MLComputePlan's availability (developer.apple.com/documentation/coreml/mlcomputeplan-1w21n)
DEVICE_NAMES = {"MLNeuralEngineComputeDevice": "ane", "MLGPUComputeDevice": "gpu", "MLCPUComputeDevice": "cpu"}


def unavailable_reason() -> str | None:
    """Why MLComputePlan cannot run here, or None when it can."""
    if sys.platform != "darwin":
        return f"MLComputePlan needs macOS {'.'.join(map(str, MIN_MACOS))}+ (this is {sys.platform})"
    release = tuple(int(part) for part in platform.mac_ver()[0].split(".")[:2] if part.isdigit())
    if release < MIN_MACOS:
        return f"MLComputePlan needs macOS {'.'.join(map(str, MIN_MACOS))}+ (this is macOS {platform.mac_ver()[0]})"
    return None


def placements(package: Path) -> dict[str, dict]:
    """``{op output name: {"preferred": "ane"|"gpu"|"cpu", "supported": [...], "cost": weight}}`` from Core ML (macOS only)."""
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    work = Path(tempfile.mkdtemp(prefix="wconv-plan-"))
    try:
        compiled = ct.models.utils.compile_model(str(package), str(work / "model.mlmodelc"))
        plan = MLComputePlan.load_from_path(path=str(compiled), compute_units=ct.ComputeUnit.ALL)
        found = {}
        for function in plan.model_structure.program.functions.values():
            for operation in function.block.operations:
                if operation.operator_name == "const" or not operation.outputs:
                    continue
                usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
                cost = plan.get_estimated_cost_for_mlprogram_operation(operation)
                if usage is None:
                    continue
                found[operation.outputs[0].name] = {
                    "preferred": DEVICE_NAMES.get(type(usage.preferred_compute_device).__name__, "?"),
                    "supported": [DEVICE_NAMES.get(type(d).__name__, "?") for d in usage.supported_compute_devices],
                    "cost": cost.weight if cost is not None else None}
        return found
    finally:
        shutil.rmtree(work, ignore_errors=True)


def side_by_side(lint: Lint, outputs: dict[str, str], plan: dict[str, dict]) -> dict:
    """The plan's ANE share and how often the lint agrees with it (eligible <=> preferred on the ANE).

    ``outputs`` maps each linted op's name to its first output's name (the key :func:`placements` uses).
    """
    rows = []
    for verdict in lint.verdicts:
        placed = plan.get(outputs.get(verdict.op, verdict.op))
        if placed is not None:
            rows.append((verdict, placed))
    agree = [verdict.eligible == (placed["preferred"] == "ane") for verdict, placed in rows]
    on_ane = [placed for _, placed in rows if placed["preferred"] == "ane"]
    return {"ops": len(rows), "ane_ops": len(on_ane),
            "ane_cost_fraction": round(sum(p["cost"] or 0 for p in on_ane) / (sum(p["cost"] or 0 for _, p in rows) or 1), 4),
            "agreement": round(sum(agree) / len(agree), 4) if agree else None,
            "disagreements": [{"op": verdict.op, "type": verdict.type, "lint": "eligible" if verdict.eligible else verdict.rules[0],
                               "preferred": placed["preferred"], "supported": placed["supported"]}
                              for (verdict, placed), same in zip(rows, agree) if not same]}


def compute_plan(package: Path, lint: Lint, outputs: dict[str, str]) -> dict:
    """The ``compute_plan`` object of ``wconv inspect``: the side-by-side numbers on macOS 14.4+, else the reason."""
    reason = unavailable_reason()
    if reason:
        return {"available": False, "reason": reason}
    return {"available": True, **side_by_side(lint, outputs, placements(package))}

"""``wconv inspect``: one report per artifact (a Core ML package, each package of a folder such as WhisperKit's,
a ggml file), as a dict (``--json``) or printed; and the lint summary every manifest carries."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError
from ..files import tree_size
from ..manifest import describe_io
from .compute_plan import compute_plan
from .contents import first_load, memory, op_census, weight_summary
from .devices import fit_table, fitting_devices
from .lint import lint_program
from .program import read_program

MB = 1e6
PARTS = ("weights_bytes", "activations_bytes", "io_bytes", "state_bytes")  # what resident_bytes adds up


def manifest_facts(path: Path) -> dict:
    """What a manifest entry records of a saved artifact: its IO (:func:`describe_io`) and its ANE lint summary."""
    return {**describe_io(path), "ane_lint": lint_summary(path)}


def lint_summary(package: Path) -> dict | None:
    """The ANE lint's counts for a saved package (the manifest's ``ane_lint``); None when it holds no ML program
    (a plugin's neural network, say)."""
    try:
        return lint_program(read_program(package)).summary()
    except InputError:
        return None


def min_target(specification_version: int) -> str:
    """The oldest iOS (and macOS) a specification version needs, e.g. ``iOS16 / macOS13``."""
    import coremltools as ct

    names = [name for name, target in ct.target.__members__.items() if target.value == specification_version]
    ios = next((name for name in names if name.startswith("iOS")), None)
    macos = next((name for name in names if name.startswith("macOS")), None)
    return " / ".join(filter(None, (ios, macos))) or f"specification {specification_version}"


def inspect_package(path: Path) -> dict:
    """The report of one ``.mlpackage``."""
    program = read_program(path)
    lint = lint_program(program)
    weights = weight_summary(program)
    needs = memory(program, weights["bytes"])
    io = describe_io(path)
    outputs = {op.name: op.outputs[0].name for op in program.ops if op.outputs}
    census = op_census(program)
    return {"artifact": str(path), "format": "mlpackage", "size_bytes": tree_size(path),
            "min_target": min_target(program.specification_version), "specification_version": program.specification_version,
            "io": {key: io[key] for key in ("inputs", "outputs", "states")},
            "ops": sum(census.values()), "op_census": census, "weights": weights,
            "ane": lint.to_dict(), "compute_plan": compute_plan(path, lint, outputs),
            "memory": needs, "fits": fitting_devices(needs["resident_bytes"]), "first_load": first_load(program)}


def inspect_ggml(path: Path) -> dict:
    """The report of a whisper.cpp ggml file: header and tensor table only (it runs on the CPU/GPU, never the ANE)."""
    from collections import Counter

    from ..layouts.ggml import read_ggml_header

    header = read_ggml_header(path)
    hparams = header["hparams"]
    by_storage, by_layer, elements = Counter(), Counter(), 0
    for tensor in header["tensors"]:
        by_storage[tensor.ggml_type] += tensor.nbytes
        parts = tensor.name.split(".")
        by_layer[".".join(parts[:3]) if "blocks" in parts[:2] else ".".join(parts[:2])] += tensor.nbytes
        elements += math.prod(tensor.shape)
    total = sum(by_storage.values())
    # whisper.cpp keeps f16 self-attention (n_text_ctx) and cross-attention (n_audio_ctx) keys and values per text layer
    kv_cache = 2 * 2 * hparams["n_text_layer"] * hparams["n_text_state"] * (hparams["n_text_ctx"] + hparams["n_audio_ctx"])
    needs = {"weights_bytes": total, "state_bytes": kv_cache, "kv_cache_bytes": kv_cache, "resident_bytes": total + kv_cache}
    return {"artifact": str(path), "format": "ggml", "size_bytes": path.stat().st_size, "min_target": None,
            "hparams": hparams, "ggml_type": header["ggml_type"], "io": None, "ops": None, "ane": None,
            "weights": {"bytes": total, "tensors": len(header["tensors"]), "elements": elements,
                        "bits_per_weight": round(8 * total / elements, 3) if elements else None,
                        "by_storage": dict(by_storage.most_common()), "by_layer": dict(by_layer)},
            "memory": needs, "fits": fitting_devices(needs["resident_bytes"])}


def artifacts_in(path: Path) -> list[Path]:
    """What ``wconv inspect PATH`` reports on: the package or ggml file itself, or those a folder holds."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist: give an .mlpackage, a ggml .bin file or a folder of them")
    if path.suffix == ".mlmodelc":
        raise InputError(f"{path} is a compiled model, which coremltools cannot read: inspect the .mlpackage it was compiled from")
    if path.suffix == ".mlpackage" or path.is_file():
        return [path]
    found = sorted([*path.glob("*.mlpackage"), *(p for p in path.glob("*.bin") if _is_ggml(p))])
    if not found:
        raise InputError(f"{path} holds no .mlpackage and no ggml file (a WhisperKit folder of only .mlmodelc "
                         "cannot be read off a Mac: inspect the packages it was compiled from)")
    return found


def _is_ggml(path: Path) -> bool:
    from ..layouts.ggml import GGML_MAGIC

    with open(path, "rb") as source:
        return int.from_bytes(source.read(4), "little") == GGML_MAGIC


def inspect_paths(paths: list[Path]) -> list[dict]:
    """One report per artifact; the members of a folder also carry the folder's total memory and fit."""
    reports = []
    for path in paths:
        members = artifacts_in(path)
        found = [inspect_ggml(member) if member.is_file() else inspect_package(member) for member in members]
        if Path(path).is_dir() and Path(path).suffix != ".mlpackage":
            resident = sum(report["memory"]["resident_bytes"] for report in found)
            for report in found:
                report["folder"] = {"path": str(path), "artifacts": len(found), "resident_bytes": resident,
                                    "fits": fitting_devices(resident)}
        reports.extend(found)
    return reports


def print_report(report: dict, console) -> None:
    """A report as text: contents, lint, placement, first-load numbers and the fit table."""
    from rich.table import Table

    weights = report["weights"]
    console.print(f"[bold]{report['artifact']}[/bold]  {report['format']}, {report['size_bytes'] / MB:.1f} MB"
                  + (f", minimum target {report['min_target']}" if report["min_target"] else f", ggml {report['ggml_type']}"))
    storage = ", ".join(f"{name} {size / MB:.1f} MB" for name, size in weights["by_storage"].items())
    console.print(f"  weights {weights['bytes'] / MB:.1f} MB in {weights['tensors']} tensors, "
                  f"{weights['bits_per_weight']} bits/weight ({storage})")
    layers = sorted(weights["by_layer"].items(), key=lambda item: -item[1])
    console.print("  largest layers: " + ", ".join(f"{name} {size / MB:.2f} MB" for name, size in layers[:6]))
    if report["io"]:
        for role in ("inputs", "outputs", "states"):
            for feature in report["io"][role]:
                console.print(f"  {role[:-1]:6} {feature['name']} {feature['dtype']} {tuple(feature['shape'])}"
                              + (f" enumerated {feature['enumerated_shapes']}" if feature.get("enumerated_shapes") else ""))
    if report["ane"]:
        console.print(f"  ops {report['ops']}: " + ", ".join(f"{name} {n}" for name, n in report["op_census"].items()))
        _print_lint(report, console)
        load = report["first_load"]
        console.print(f"  first-load cost risk: {load['ops']} ops, {load['distinct_op_shapes']} distinct op shapes, "
                      f"{load['attention_softmax_ops']} attention softmaxes (compare across variants; not a time)")
    else:
        console.print("  ggml runs on whisper.cpp's CPU/GPU backends: no ANE lint")
    needs = report["memory"]
    parts = ", ".join(f"{key.removesuffix('_bytes')} {needs[key] / MB:.1f}" for key in PARTS if needs.get(key))
    kv_cache = f", of which KV cache {needs['kv_cache_bytes'] / MB:.1f} MB" if needs.get("kv_cache_bytes") else ""
    console.print(f"  resident when loaded ≈ {needs['resident_bytes'] / MB:.1f} MB ({parts} MB{kv_cache}; an estimate)")
    table = Table("device", "chip", "RAM GB", "ANE cores / TOPS", "app budget GB", "fits", box=None)
    for row in fit_table(needs["resident_bytes"]):
        table.add_row(row["name"], row["chip"], str(row["ram_gb"]), f"{row['ane_cores']} / {row['ane_tops']}",
                      f"{row['budget_bytes'] / (1 << 30):.1f}", "yes" if row["fits"] else "[red]no[/red]")
    console.print(table)
    if folder := report.get("folder"):
        console.print(f"  the folder's {folder['artifacts']} artifacts together ≈ {folder['resident_bytes'] / MB:.1f} MB: "
                      f"fits {len(folder['fits'])} of {len(fit_table(0))} devices")


def _print_lint(report: dict, console) -> None:
    ane = report["ane"]
    console.print(f"  ANE lint (static and heuristic, not a measurement): {ane['eligible_ops']}/{ane['total_ops']} ops "
                  f"({100 * ane['eligible_ops_fraction']:.1f}%), {100 * ane['eligible_flops_fraction']:.1f}% of FLOPs pass")
    for row in ane["ineligible"][:20]:
        console.print(f"    {row['op']} ({row['type']}): {', '.join(row['rules'])}")
    if len(ane["ineligible"]) > 20:
        console.print(f"    … and {len(ane['ineligible']) - 20} more (--json lists all)")
    plan = report["compute_plan"]
    if plan["available"]:
        console.print(f"  MLComputePlan: {plan['ane_ops']}/{plan['ops']} ops preferred on the ANE "
                      f"({100 * plan['ane_cost_fraction']:.1f}% of the estimated cost); lint agrees on "
                      f"{100 * (plan['agreement'] or 0):.1f}% of ops")
    else:
        console.print(f"  MLComputePlan: {plan['reason']}")

"""Source models outside a conversion: loading one (for `wconv verify`, `wconv transcribe`, a family's
parent), reading torch checkpoint files safely and recognising huggingface_hub snapshot folders."""

from __future__ import annotations

import pickle
import re
import textwrap
from pathlib import Path

from .errors import InputError
from .job import Job, LoadedModel
from .manager import FamilyHooks, get_plugin_manager, resolve_family
from .pipeline import call_stage
from .runtime.reference import check_weights


def hub_repo_id(directory: Path) -> str | None:
    """The hub id (``org/name``) of a snapshot in huggingface_hub's cache (``models--org--name/snapshots/<commit>``)."""
    resolved = Path(directory).resolve()
    cache_entry = resolved.parent.parent.name
    if resolved.parent.name == "snapshots" and cache_entry.startswith("models--"):
        return cache_entry[len("models--"):].replace("--", "/", 1)
    return None


def load_source(source: str, family: str | None = None, pm=None, expected_sha256: str | None = None) -> LoadedModel:
    """Run the load and patch stages for ``source``; check it is the checkpoint a manifest names."""
    pm = pm or get_plugin_manager()
    job = Job(source=source, family=family, output=Path("."))
    hooks = FamilyHooks(pm, resolve_family(pm, family)) if family else pm.hook
    model = call_stage("load", hooks.wconv_load, job=job)
    check_weights(model.dims, model.state_dict, model.source)
    call_stage("patch", FamilyHooks(pm, model.family).wconv_patch, model=model, job=job)
    if expected_sha256 and model.source_sha256 != expected_sha256:
        raise InputError(f"{source} is not the checkpoint these artifacts were converted from (sha256 differs): pass --against with the original")
    return model


def load_torch_file(path: Path, resave: str):
    """``torch.load(path, weights_only=True)`` on the CPU, tensors memory-mapped from the file (pages are read when
    a stage uses them, so a 3 GB checkpoint is never copied whole); any failure is one InputError naming ``path``.

    A pickle that would import code is refused as unsafe, with how to get a safe file: the
    model's safetensors, or ``resave`` (how to re-save its state dict where the file is trusted).
    """
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # torch's pre-1.6 format cannot be mapped: read it whole
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise unreadable_torch_file(path, e) from e
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it imports {found[1]})" if found else ""
        raise InputError(f"{path} was refused as unsafe: it is a pickle that would run code when loaded{what}, and wconv "
                         f"loads only tensors. Get a safe file: the model's .safetensors weights, or {resave}") from e
    except Exception as e:  # torch's loaders fail on garbage in many ways (KeyError, IndexError, EOFError…)
        raise unreadable_torch_file(path, e) from e


def unreadable_torch_file(path: Path, error: Exception) -> InputError:
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {textwrap.shorten(lines[0], 120, placeholder=' …')}" if lines else type(error).__name__
    return InputError(f"cannot read {path}: it is truncated or not a torch checkpoint ({reason}); re-download or re-save it")

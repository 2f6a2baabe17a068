"""wconv: convert Whisper speech models to Neural-Engine-friendly Core ML.

Plugin authors need only what this module exports: ``hookimpl``, the stage objects, ``Layout``,
errors and a few helpers. Heavier names (:func:`wconv.convert`, :func:`load_source`…) are imported
on first use, so ``import wconv`` stays light.
"""

from .errors import ConversionError, InputError, StageError, VerificationError, WconvError
from .files import cache_dir, sha256_file
from .hookspecs import hookimpl
from .job import Artifact, ArtifactKind, Check, Job, LoadedModel, Reuse
from .layouts import Layout
from .runtime.reference import LazyEncoder

# name -> module that defines it, imported when first asked for
LAZY = {
    "convert": "api",
    "load_source": "sources",
    "hub_repo_id": "sources",
    "load_torch_file": "sources",
    "describe_io": "manifest",
    "manifests_in": "manifest",
    "read_manifest": "manifest",
    "dims_from_config": "layouts.hf_config",
    "write_hf_configs": "layouts.hf_config",
    "read_ggml": "layouts.ggml",
    "is_ggml_file": "layouts.ggml",
    "quantize_blocks": "layouts.ggml",
}

__all__ = [
    "Artifact", "ArtifactKind", "Check", "ConversionError", "InputError", "Job", "LazyEncoder", "Layout", "LoadedModel",
    "Reuse", "StageError", "VerificationError", "WconvError", "cache_dir", "hookimpl", "sha256_file", *LAZY,
]


def __getattr__(name: str):
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'wconv' has no attribute '{name}'")

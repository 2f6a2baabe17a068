"""wconv: convert Whisper speech models to Neural-Engine-friendly Core ML.

Plugin authors need only what this module exports: ``hookimpl``, the stage objects and errors.
Scripts call :func:`wconv.convert` (imported on first use, so ``import wconv`` stays light).
"""

from .errors import ConversionError, InputError, StageError, VerificationError, WconvError
from .hookspecs import hookimpl
from .job import Artifact, Check, Job, LoadedModel
from .reference import LazyEncoder

__all__ = [
    "Artifact", "Check", "ConversionError", "convert", "InputError", "Job", "LazyEncoder", "LoadedModel",
    "StageError", "VerificationError", "WconvError", "hookimpl",
]


def __getattr__(name: str):
    if name == "convert":
        from .api import convert

        return convert
    raise AttributeError(f"module 'wconv' has no attribute '{name}'")

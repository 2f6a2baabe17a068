"""wconv: convert Whisper speech models to Neural-Engine-friendly Core ML.

Plugin authors need only what this module exports: ``hookimpl``, the stage objects and errors.
"""

from .errors import ConversionError, InputError, StageError, VerificationError, WconvError
from .hookspecs import hookimpl
from .job import Artifact, Check, Job, LoadedModel
from .reference import LazyEncoder

__all__ = [
    "Artifact", "Check", "ConversionError", "InputError", "Job", "LazyEncoder", "LoadedModel",
    "StageError", "VerificationError", "WconvError", "hookimpl",
]

"""The Python API: ``wconv.convert(model, family, output, **options)`` runs the pipeline and returns
its :class:`~wconv.pipeline.Result`; failures raise :class:`wconv.WconvError` subclasses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import InputError
from .job import EXTRA_DEFAULTS, EXTRA_OPTIONS, Job
from .pipeline import Result, StageReporter, run

# Job fields a caller may set by keyword (source, family and output are convert()'s own arguments).
JOB_OPTIONS = tuple(f.name for f in dataclasses.fields(Job) if f.name not in ("source", "family", "output", "options"))
OPTION_NAMES = JOB_OPTIONS + EXTRA_OPTIONS


def build_job(model: str | os.PathLike, family: str | None = None, output: str | os.PathLike = "models", **options) -> Job:
    """The :class:`Job` for convert()'s arguments; an option given as None keeps its default."""
    unknown = [name for name in options if name not in OPTION_NAMES]
    if unknown:
        raise InputError(f"unknown option '{unknown[0]}': use one of {', '.join(OPTION_NAMES)}")
    given = {name: value for name, value in options.items() if value is not None}
    fields = {name: value for name, value in given.items() if name in JOB_OPTIONS}
    if "audio_lengths" in fields:
        try:
            fields["audio_lengths"] = tuple(int(frames) for frames in fields["audio_lengths"])
        except (TypeError, ValueError):
            raise InputError(f"option audio_lengths takes a list of mel frame counts, not {fields['audio_lengths']!r}") from None
    if "verify_input" in fields:
        fields["verify_input"] = Path(fields["verify_input"])
    extra = {**EXTRA_DEFAULTS, **{name: value for name, value in given.items() if name in EXTRA_OPTIONS}}
    return Job(source=os.fspath(model), family=family, output=Path(output), options=extra, **fields)


def convert(model: str | os.PathLike, family: str | None = None, output: str | os.PathLike = "models", *,
            pm=None, reporter: StageReporter | None = None, **options) -> Result:
    """Convert ``model`` (a name, path or hub id) into Core ML artifacts in ``output``.

    ``options`` are :class:`Job` fields (name, force, min_target, audio_lengths, verify, min_psnr,
    verify_input) or ``EXTRA_OPTIONS`` (decoder, target, ggml_type…), named as `wconv run` flags
    with underscores. ``pm`` replaces the plugin manager, ``reporter`` the stage display on stderr.
    """
    return run(build_job(model, family, output, **options), pm, reporter)

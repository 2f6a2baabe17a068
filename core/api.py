"""The Python API: ``wconv.convert(model, family, output, **options)`` runs the pipeline and returns
its :class:`~wconv.pipeline.Result`; failures raise :class:`wconv.WconvError` subclasses."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

from .console import StageReporter, libraries_quiet
from .errors import InputError
from .job import JOB_DEFAULTS, Job, target_rank
from .pipeline import Result, run

# Job fields a caller may set by keyword (source, family and output are convert()'s own arguments).
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Job) if f.name not in ("source", "family", "output"))


def build_job(model: str | os.PathLike, family: str | None = None, output: str | os.PathLike = "models", **options) -> Job:
    """The :class:`Job` for convert()'s arguments; an option given as None keeps its default."""
    unknown = [name for name in options if name not in OPTION_NAMES]
    if unknown:
        raise InputError(f"unknown option '{unknown[0]}': use one of {', '.join(OPTION_NAMES)}")
    fields = {name: value for name, value in options.items() if value is not None}
    for name, value in fields.items():
        check_option_type(name, value)
    if "audio_lengths" in fields:
        try:
            fields["audio_lengths"] = tuple(int(frames) for frames in fields["audio_lengths"])
        except (TypeError, ValueError):
            raise InputError(f"option audio_lengths takes a list of mel frame counts, not {fields['audio_lengths']!r}") from None
    if not 1 <= fields.get("text_context", JOB_DEFAULTS["text_context"]) <= JOB_DEFAULTS["text_context"]:
        raise InputError(f"--text-context {fields['text_context']} is outside 1-448 (Whisper's text context): use 224 "
                         "(what WhisperKit decodes) or 448")
    if "verify_input" in fields:
        fields["verify_input"] = Path(fields["verify_input"])
        refuse_silent_audio(fields["verify_input"])
    if "compress" in fields:
        fields["min_target"] = compression_target(fields["compress"], fields.get("min_target"))
    return Job(source=os.fspath(model), family=family, output=Path(output), **fields)


def check_option_type(name: str, value) -> None:
    """Refuse a value whose type the Job field cannot hold (a list for ``layout``, a string for ``force``...)."""
    hint = typing.get_type_hints(Job)[name]
    if typing.get_origin(hint) is tuple:
        return  # audio_lengths: converted to ints below, with its own message
    kinds = tuple(kind for kind in (typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,))
                  if kind is not type(None))
    kinds += (int,) if float in kinds else ()
    kinds += (str, os.PathLike) if Path in kinds else ()
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(sorted({ACCEPTED_NAMES.get(kind, kind.__name__) for kind in kinds}))
        raise InputError(f"option {name} takes {expected}, not {value!r}")


ACCEPTED_NAMES = {str: "a string", bool: "true or false", int: "a number", float: "a number", Path: "a path",
                  os.PathLike: "a path"}


def refuse_silent_audio(path: Path) -> None:
    """A ``--verify-input`` wav without speech would prove nothing: refused before anything loads."""
    from .runtime.audio import is_audio_file, read_wav, silence_problem

    if is_audio_file(path) and path.is_file() and (problem := silence_problem(read_wav(path))):
        raise InputError(f"--verify-input {path}: {problem}; give a clip with speech")


def compression_target(compress: str, pinned: str | None) -> str:
    """The minimum target for ``--compress``: the spec's when none was pinned; a pinned older one is refused."""
    from .compress.specs import parse_spec

    needed = parse_spec(compress).min_target
    target = pinned or JOB_DEFAULTS["min_target"]
    if target_rank(needed) <= target_rank(target):
        return target
    if pinned:
        raise InputError(f"--compress {compress} needs --min-target {needed} or later, not {pinned}: raise it, or choose "
                         "int8, palette8/6/4/2 or mixed (iOS16)")
    return needed


def convert(model: str | os.PathLike, family: str | None = None, output: str | os.PathLike = "models", *,
            pm=None, reporter: StageReporter | None = None, **options) -> Result:
    """Convert ``model`` (a name, path or hub id) into Core ML artifacts in ``output``.

    ``options`` are :class:`Job` fields (name, force, min_target, layout, audio_lengths, decoder,
    ggml_type, verify, min_psnr, verify_input…), named as `wconv run` flags with underscores.
    ``pm`` replaces the plugin manager, ``reporter`` the stage display on stderr.
    """
    job = build_job(model, family, output, **options)
    with libraries_quiet():
        result = run(job, pm, reporter)
    if job.min_target != (options.get("min_target") or JOB_DEFAULTS["min_target"]):
        result.notes.append(f"--compress {job.compress} needs {job.min_target}: the minimum target was raised to it")
    for entry in result.manifest["artifacts"]:
        if entry.get("min_target", job.min_target) != job.min_target:
            result.notes.append(f"{entry['file']} needs {entry['min_target']}: it was converted for it (the manifest says so)")
    return result

"""Output layouts: what a job writes and where (whisper.cpp's files, plain Core ML, WhisperKit's folder),
each a :class:`Layout` registered through ``wconv_register_layouts``; IO contracts, ggml and config files.
May import the host's job, errors and hookspecs, and the runtime; never the pipeline, conversion or verification."""

from __future__ import annotations

from pathlib import Path

import pluggy

from ..errors import InputError
from ..job import Artifact, Job, LoadedModel


class Layout:
    """What a job writes and where. Subclass it and register an instance with ``wconv_register_layouts``.

    The pipeline asks, in order: :meth:`check_options` (before loading), :meth:`folder` and
    :meth:`plan` (after loading), :meth:`extra_files` (before any work, to refuse overwriting),
    :meth:`write_extra_files` (after the artifacts), on macOS :meth:`compile`, then
    :meth:`final_folder` and, elsewhere than macOS, :meth:`compile_command` (the manifest's and :meth:`mac_hint`'s).
    """

    name: str = ""
    description: str = ""
    precisions: tuple[str, ...] = ("float16",)  # the --precision values this layout writes

    def check_options(self, job: Job) -> None:
        """Refuse options that do not apply to this layout (an :class:`InputError`), before anything loads."""

    def folder(self, model: LoadedModel, job: Job) -> str:
        """A folder in the output that holds everything and is published whole, or ``""`` for files in the output itself."""
        return ""

    def final_folder(self, model: LoadedModel, job: Job, staged: Path) -> str:
        """The folder's name once everything in ``staged`` is written (e.g. with its size); default :meth:`folder`'s."""
        return self.folder(model, job)

    def plan(self, model: LoadedModel, job: Job) -> list[Artifact]:
        """Every Core ML artifact the job writes, in conversion order."""
        raise NotImplementedError

    def extra_files(self, model: LoadedModel, job: Job) -> list[str]:
        """Names of the files :meth:`write_extra_files` will write (to refuse overwriting them up front)."""
        return []

    def write_extra_files(self, model: LoadedModel, job: Job, folder: Path) -> list[dict]:
        """Write the non-Core ML files into ``folder``; returns their manifest entries (``file``, ``kind``, …)."""
        return []

    def compile(self, folder: Path, plan: list[Artifact]) -> list[Path]:
        """macOS: compile what the consumer loads (``.mlmodelc``…) into ``folder``; returns the paths written."""
        return []

    def compile_command(self, folder: Path, plan: list[Artifact]) -> str | None:
        """The shell command that does on a Mac what :meth:`compile` does, if anything (the manifest's ``compile_command``)."""
        return None

    def mac_hint(self, folder: Path, plan: list[Artifact]) -> str | None:
        """Elsewhere: what to run on a Mac for what :meth:`compile` would have done, if anything."""
        command = self.compile_command(folder, plan)
        return command and f"on a Mac with Xcode: {command}"


def collect_layouts(pm: pluggy.PluginManager) -> dict[str, Layout]:
    """Every layout the plugins register, by name."""
    layouts: dict[str, Layout] = {}

    def register(layout: Layout) -> None:
        if layout.name in layouts:
            raise ValueError(f"layout '{layout.name}' is registered twice")
        layouts[layout.name] = layout

    pm.hook.wconv_register_layouts(register=register)
    return layouts


def select_layout(pm: pluggy.PluginManager, job: Job) -> Layout:
    """The layout ``job.layout`` names, its options checked."""
    layouts = collect_layouts(pm)
    if job.layout not in layouts:
        raise InputError(f"unknown layout '{job.layout}': choose one of {', '.join(sorted(layouts))} (see `wconv layouts`)")
    layout = layouts[job.layout]
    if job.precision and job.precision not in layout.precisions:
        raise InputError(f"--precision {job.precision} does not apply to --layout {layout.name}: it writes {', '.join(layout.precisions)}")
    layout.check_options(job)
    return layout

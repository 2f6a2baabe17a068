"""Hook specifications for wconv plugins.

Stages run in order: load -> patch -> (reuse, or trace -> convert -> compress -> postprocess) ->
save -> verify, per artifact of the job's layout. Layouts (what a job writes, and where) come from
``wconv_register_layouts``.
A plugin that implements ``wconv_load`` is a *model family*; after loading, the later stages are
called only on the chosen family and on plugins that are not families. Core's defaults for trace,
convert, postprocess and verify are ordinary plugins marked ``trylast``: a family overrides only
what differs. Hooks are called with keyword arguments; an implementation may take any subset of
them (and must not give them defaults).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import coremltools as ct

    from .job import Artifact, Check, Job, LoadedModel, Reuse
    from .layouts import Layout

hookspec = pluggy.HookspecMarker("wconv")
hookimpl = pluggy.HookimplMarker("wconv")


@hookspec(firstresult=True)
def wconv_load(job: Job) -> LoadedModel | None:
    """Load the checkpoint named by ``job.source`` and name its weights the canonical way.

    Runs first, once per job. Return a :class:`wconv.LoadedModel` whose ``family`` is this
    plugin's registered name, or ``None`` if this plugin does not handle ``job.source`` (the next
    family is asked). The first non-None result wins; if none answers, the job fails with exit 2.
    Raise :class:`wconv.InputError` for a source this family recognises but cannot read.
    """


@hookspec
def wconv_patch(model: LoadedModel, job: Job) -> None:
    """Adjust the loaded model in place before tracing (e.g. disable SDPA, fix weights).

    Runs once after load, on the chosen family and every non-family plugin. Return value ignored.
    """


@hookspec
def wconv_register_layouts(register: Callable[[Layout], None]) -> None:
    """Register output layouts: call ``register(layout)`` with each :class:`wconv.Layout`.

    Called once per plugin manager. A layout says what a job writes and where (its artifact plan,
    folder, extra files, macOS compile step); ``--layout NAME`` picks one by its ``name``.
    Registering a name twice is an error.
    """


@hookspec(firstresult=True)
def wconv_reuse(model: LoadedModel, artifact: Artifact, job: Job) -> Reuse | None:
    """Offer an already converted package to link in place of converting ``artifact``.

    Runs once per artifact before trace, on the chosen family and every non-family plugin. Return a
    :class:`wconv.Reuse` (the package is hard-linked under ``artifact.filename``, or the Reuse's own
    ``filename``: a compiled ``.mlmodelc``, which the layout then does not compile; its
    trace/convert/compress/postprocess/verify stages are skipped) or ``None`` to convert as usual.
    """


@hookspec(firstresult=True)
def wconv_trace(model: LoadedModel, artifact: Artifact, job: Job) -> Any:
    """Build the ANE PyTorch module for ``artifact`` and trace it.

    Runs once per artifact. Return the traced program (a ``torch.export.ExportedProgram`` for the
    core default, or anything your ``wconv_convert`` accepts). ``None`` passes to the next plugin;
    the core default (trylast) maps ``model.state_dict`` onto the shared ANE modules and runs
    ``torch.export``. The first non-None result wins.
    """


@hookspec(firstresult=True)
def wconv_convert(traced: Any, model: LoadedModel, artifact: Artifact, job: Job) -> ct.models.MLModel | None:
    """Convert the traced program into a Core ML ML program.

    Runs once per artifact. Return the ``MLModel``; ``None`` passes to the next plugin. The core
    default (trylast) calls ``ct.convert`` with fp16 compute precision, the artifact's IO names,
    shapes and dtypes, and ``job.min_target``. The first non-None result wins.
    """


@hookspec(firstresult=True)
def wconv_compress(mlmodel: ct.models.MLModel, model: LoadedModel, artifact: Artifact, job: Job) -> ct.models.MLModel | None:
    """Compress the converted model's weights as ``job.compress`` asks; return the compressed model.

    Runs once per converted artifact, before postprocess. Return a new ``MLModel`` (it replaces the
    converted one) or ``None`` to keep it as it is. The core default (trylast) applies the job's
    compression spec with ``coremltools.optimize.coreml``; it returns ``None`` when ``job.compress``
    is unset. The first non-None result wins.
    """


@hookspec
def wconv_postprocess(mlmodel: ct.models.MLModel, model: LoadedModel, artifact: Artifact, job: Job) -> None:
    """Edit the converted model in place before it is saved: metadata, descriptions.

    Runs once per artifact, on every plugin (the core default, trylast, writes author, license,
    description and source metadata). Return value ignored.
    """


@hookspec
def wconv_verify(path: Any, model: LoadedModel, artifact: Artifact, job: Job) -> Check | list[Check] | None:
    """Compare the saved artifact at ``path`` with the source model.

    Runs once per artifact after it is saved (skipped with ``--no-verify``), on every plugin;
    results are collected. Return a :class:`wconv.Check`, a list of them, or ``None`` when this
    plugin has nothing to check. The core default (trylast) runs the artifact (Core ML on macOS,
    wconv's reference evaluator elsewhere) against ``model.reference_encoder`` in fp32.
    """

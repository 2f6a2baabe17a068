"""The conversion pipeline: load -> patch -> (trace -> convert -> postprocess -> save -> verify)
per artifact -> ggml file or WhisperKit's config files -> manifest -> publish. Each stage is a
hook; this module only runs them in order."""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pluggy
from rich.console import Console

from .artifacts import WHISPERKIT, check_layout_options, plan_artifacts
from .errors import ConversionError, InputError, StageError, VerificationError, WconvError
from .job import Check, Job, LoadedModel
from .manager import FamilyHooks, family_names, get_plugin_manager, resolve_family
from .manifest import build_manifest, describe_io, manifest_filename, write_manifest
from .outputs import link_tree, publish, refuse_to_overwrite, staging_dir
from . import whisperkit
from .whispercpp import compile_for_whispercpp, ggml_filename, mac_hint, wants_ggml, write_ggml_model


@dataclass
class Result:
    """What one conversion produced."""

    model: LoadedModel
    paths: list[Path]
    manifest_path: Path
    manifest: dict
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


STDERR = Console(stderr=True)


class StageReporter:
    """Shows each stage on stderr with rich: a spinner while it runs, its time when done.

    A pipeline run inside a stage (distil converting its parent) prints its stages without a
    second spinner: rich allows one live display per console.
    """

    active = 0

    def __init__(self, console: Console | None = None):
        self.console = console or STDERR

    def run(self, label: str, call, **kwargs):
        started = time.perf_counter()
        StageReporter.active += 1
        try:
            if StageReporter.active == 1:
                with self.console.status(f"[bold]{label}[/bold] …"):
                    result = call(**kwargs)
            else:
                result = call(**kwargs)
        finally:
            StageReporter.active -= 1
        self.console.print(f"[green]✓[/green] {label} [dim]({time.perf_counter() - started:.1f} s)[/dim]")
        return result


def call_stage(stage: str, caller, **kwargs):
    """Call one hook; a plugin's exception becomes a StageError naming the stage and plugin(s)."""
    try:
        result = caller(**kwargs)
    except WconvError:
        raise
    except Exception as e:
        plugins = [impl.plugin_name for impl in caller.get_hookimpls()]
        raise StageError(stage, plugins, f"{type(e).__name__}: {e}") from e
    if caller.spec.opts.get("firstresult") and result is None:
        if stage == "load":
            raise InputError(f"no model family recognises '{kwargs['job'].source}': check the name or path, or pass --family (see `wconv families`)")
        raise StageError(stage, [], "no plugin handled this stage")
    return result


def run(job: Job, pm: pluggy.PluginManager | None = None, reporter: StageReporter | None = None) -> Result:
    """Convert ``job.source`` into Core ML artifacts in ``job.output``; see the module docstring."""
    pm = pm or get_plugin_manager()
    reporter = reporter or StageReporter()

    def stage(name: str, label: str, hook, **kwargs):
        return reporter.run(label, call_stage, stage=name, caller=hook, **kwargs)

    check_layout_options(job)
    hooks = FamilyHooks(pm, resolve_family(pm, job.family)) if job.family else pm.hook
    model = stage("load", f"load {job.source}", hooks.wconv_load, job=job)
    if model.family not in family_names(pm):
        raise StageError("load", [model.family], f"LoadedModel.family '{model.family}' is not a registered family: "
                         "a family plugin must report the name it is registered under")
    hooks = FamilyHooks(pm, model.family)
    if job.name:
        model.name = job.name
    stage("patch", "patch", hooks.wconv_patch, model=model, job=job)

    plan = plan_artifacts(model, job)
    # WhisperKit's layout is one folder in the output, published whole; the others put files in the output itself
    folder = whisperkit.folder_name(model, job) if job.options.get("layout") == WHISPERKIT else ""
    manifest_name = manifest_filename(model.name)
    names = [artifact.filename for artifact in plan]
    if wants_ggml(job):
        names.append(ggml_filename(model, job))
    published = [folder] if folder else names + [manifest_name]
    refuse_to_overwrite(job.output, published, job.force)

    checks: list[Check] = []
    described: list[dict] = []
    with staging_dir(job.output) as staging:
        work = staging / folder
        work.mkdir(exist_ok=True)
        reused = model.extra.get("reuse", {})
        for artifact in plan:
            what = artifact.filename
            if what in reused:
                reporter.run(f"reuse {what} from {reused[what]['parent']}", link_tree, source=Path(reused[what]["path"]), target=work / what)
                described.append({"file": what, "kind": artifact.kind, "reused_from": reused[what]["path"], **describe_io(work / what)})
                continue
            traced = stage("trace", f"trace {what}", hooks.wconv_trace, model=model, artifact=artifact, job=job)
            mlmodel = stage("convert", f"convert {what}", hooks.wconv_convert, traced=traced, model=model, artifact=artifact, job=job)
            del traced
            stage("postprocess", f"postprocess {what}", hooks.wconv_postprocess, mlmodel=mlmodel, model=model, artifact=artifact, job=job)
            reporter.run(f"save {what}", save_model, mlmodel=mlmodel, path=work / what)
            del mlmodel
            gc.collect()
            described.append({"file": what, "kind": artifact.kind, **describe_io(work / what)})
            if job.verify:
                results = stage("verify", f"verify {what}", hooks.wconv_verify, path=work / what, model=model, artifact=artifact, job=job)
                checks.extend(flatten_checks(results))
        if wants_ggml(job):
            ggml_path = reporter.run(f"write {names[-1]}", write_ggml_model, model=model, job=job, folder=work)
            described.append({"file": ggml_path.name, "kind": "ggml", "ggml_type": job.options.get("ggml_type", "f16")})
        if folder:
            files = reporter.run("write config and tokenizer files", whisperkit.write_folder_files, model=model, folder=work)
            described.extend({"file": name, "kind": "config", "origin": origin} for name, origin in files.items())
            names += list(files)
        compile_error = None
        if sys.platform == "darwin" and (folder or wants_ggml(job)):
            try:
                if folder:
                    names += [p.name for p in reporter.run("compile for WhisperKit", whisperkit.compile_models, folder=work)]
                else:
                    names += [p.name for p in reporter.run("compile for whisper.cpp", compile_for_whispercpp, package=work / plan[0].filename)]
            except ConversionError as e:
                compile_error = str(e)  # the packages stay: WhisperKit loads them as they are, and they compile later
        manifest = build_manifest(model, job, described, checks)
        write_manifest(work / manifest_name, manifest)
        paths = publish(staging, job.output, published)

    if folder:
        result = Result(model=model, paths=[paths[0] / name for name in names], manifest_path=paths[0] / manifest_name,
                        manifest=manifest, checks=checks)
    else:
        result = Result(model=model, paths=paths[:-1], manifest_path=paths[-1], manifest=manifest, checks=checks)
    if (folder or wants_ggml(job)) and (sys.platform != "darwin" or compile_error):
        hint = whisperkit.mac_hint(paths[0]) if folder else mac_hint(paths[0])
        result.notes.append(f"{compile_error}; {hint}" if compile_error else hint)
    failed = [check for check in checks if not check.passed]
    if failed:
        kept = paths[0] if folder else job.output
        raise VerificationError(f"verification failed for {failed[0].artifact}: {failed[0].message} (artifacts kept in {kept})")
    return result


def save_model(mlmodel, path: Path) -> None:
    mlmodel.save(str(path))


def flatten_checks(results) -> list[Check]:
    """verify returns one list per plugin, each a Check, a list of Checks, or None."""
    flat: list[Check] = []
    for item in results:
        if isinstance(item, Check):
            flat.append(item)
        elif item:
            flat.extend(item)
    return flat

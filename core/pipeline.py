"""The conversion pipeline, top to bottom: choose the layout -> load -> patch -> plan -> per artifact
(reuse, or trace -> convert -> compress -> postprocess -> save) -> verify -> the layout's extra files ->
compile (macOS) -> manifest -> publish. Each stage is a hook or a layout method; this module only runs them in order."""

from __future__ import annotations

import ctypes
import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from .compress.report import compression_entry
from .console import StageReporter
from .errors import ConversionError, InputError, StageError, VerificationError, WconvError
from .files import link_tree, publish, refuse_to_overwrite, remove_stale, staging_dir
from .inspection.report import manifest_facts
from .job import Artifact, ArtifactKind, Check, Job, LoadedModel
from .layouts import select_layout
from .manager import FamilyHooks, family_names, get_plugin_manager, resolve_family
from .manifest import build_manifest, listed_files, manifest_filename, write_manifest
from .runtime.reference import check_weights


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


def call_stage(stage: str, caller, **kwargs):
    """Call one hook; a plugin's exception becomes a StageError naming the stage and plugin(s)."""
    try:
        result = caller(**kwargs)
    except WconvError:
        raise
    except Exception as e:
        plugins = [impl.plugin_name for impl in caller.get_hookimpls()]
        raise StageError(stage, plugins, f"{type(e).__name__}: {e}") from e
    if caller.spec.opts.get("firstresult") and result is None and stage in REQUIRED_STAGES:
        if stage == "load":
            raise InputError(f"no model family recognises '{kwargs['job'].source}': check the name or path, or pass --family (see `wconv families`)")
        raise StageError(stage, [], "no plugin handled this stage")
    return result


REQUIRED_STAGES = ("load", "trace", "convert")  # firstresult stages that must give a result (reuse and compress may decline)
UNCOMPRESSED = ".uncompressed"  # staging subfolder of the models as converted, before the compress stage


def load(job: Job, pm: pluggy.PluginManager, stage) -> LoadedModel:
    """The load and patch stages: the family the job names (or the first that recognises the source)."""
    hooks = FamilyHooks(pm, resolve_family(pm, job.family)) if job.family else pm.hook
    model = stage("load", f"load {job.source}", hooks.wconv_load, job=job)
    if model.family not in family_names(pm):
        raise StageError("load", [model.family], f"LoadedModel.family '{model.family}' is not a registered family: "
                         "a family plugin must report the name it is registered under")
    check_weights(model.dims, model.state_dict, model.source)
    if job.name:
        model.name = job.name
    stage("patch", "patch", FamilyHooks(pm, model.family).wconv_patch, model=model, job=job)
    return model


def run(job: Job, pm: pluggy.PluginManager | None = None, reporter: StageReporter | None = None) -> Result:
    """Convert ``job.source`` into Core ML artifacts in ``job.output``; see the module docstring."""
    pm = pm or get_plugin_manager()
    reporter = reporter or StageReporter()

    def stage(name: str, label: str, hook, **kwargs):
        return reporter.run(label, call_stage, stage=name, caller=hook, **kwargs)

    layout = select_layout(pm, job)
    model = load(job, pm, stage)
    hooks = FamilyHooks(pm, model.family)
    plan = layout.plan(model, job)
    folder = layout.folder(model, job)  # a folder published whole, or "" for files in the output itself
    manifest_name = manifest_filename(model.name)
    names = [artifact.filename for artifact in plan]
    extra_files = layout.extra_files(model, job)

    checks: list[Check] = []
    described: list[dict] = []
    reused: dict[str, dict] = {}
    with staging_dir(job.output, model.name, lambda: estimated_bytes(model, plan, bool(extra_files))) as staging:
        refuse_to_overwrite(job.output, [folder] if folder else names + extra_files + [manifest_name], job.force)
        work = staging / folder
        work.mkdir(exist_ok=True)
        before = staging / UNCOMPRESSED / folder  # every artifact as it was before the compress stage, for comparison
        before.mkdir(parents=True)
        for artifact in plan:
            what = artifact.filename
            reuse = call_stage("reuse", hooks.wconv_reuse, model=model, artifact=artifact, job=job)
            if reuse:
                if reuse.filename and reuse.filename != what:  # linked under its own kind of file: nothing to compile
                    names[names.index(what)] = what = reuse.filename
                    refuse_to_overwrite(job.output / folder, [what], job.force)
                reporter.run(f"reuse {what} from {reuse.parent}", link_tree, source=Path(reuse.path), target=work / what)
                link_tree(work / what, before / what)
                reused[what] = reuse.to_dict()
                described.append({"file": what, "kind": artifact.kind.value, "reused_from": str(reuse.path), **manifest_facts(work / what)})
                continue
            traced = stage("trace", f"trace {what}", hooks.wconv_trace, model=model, artifact=artifact, job=job)
            mlmodel = stage("convert", f"convert {what}", hooks.wconv_convert, traced=traced, model=model, artifact=artifact, job=job)
            del traced
            compressed = stage("compress", f"compress {what}", hooks.wconv_compress, mlmodel=mlmodel, model=model, artifact=artifact, job=job)
            was_compressed = compressed is not None
            if was_compressed:
                reporter.run(f"save {what} uncompressed", save_model, mlmodel=mlmodel, path=before / what)
                mlmodel = compressed
            stage("postprocess", f"postprocess {what}", hooks.wconv_postprocess, mlmodel=mlmodel, model=model, artifact=artifact, job=job)
            reporter.run(f"save {what}", save_model, mlmodel=mlmodel, path=work / what)
            del mlmodel, compressed
            give_back_memory()
            if not was_compressed:
                link_tree(work / what, before / what)
            entry = {"file": what, "kind": artifact.kind.value, **manifest_facts(work / what)}
            artifact_checks, uncompressed_checks = [], []
            if job.verify:
                artifact_checks = flatten_checks(stage("verify", f"verify {what}", hooks.wconv_verify, path=work / what, model=model, artifact=artifact, job=job))
                checks.extend(artifact_checks)
                if was_compressed:
                    uncompressed_checks = flatten_checks(stage("verify", f"verify {what} uncompressed", hooks.wconv_verify,
                                                               path=before / what, model=model, artifact=artifact, job=job))
                give_back_memory()
            if was_compressed:
                entry["compression"] = compression_entry(work / what, before / what, artifact_checks, uncompressed_checks)
                if recipe_file := entry["compression"].get("recipe_file"):
                    names.append(recipe_file)
            described.append(entry)
        extra = reporter.run(f"write {layout.name} files", layout.write_extra_files, model=model, job=job, folder=work)
        described.extend(extra)
        names += [entry["file"] for entry in extra]
        compile_error = None
        packages = [artifact for artifact in plan if artifact.filename in names]  # those not reused already compiled
        if sys.platform == "darwin":
            try:
                names += [path.name for path in reporter.run(f"compile for {layout.name}", layout.compile, folder=work, plan=packages)]
            except ConversionError as e:
                compile_error = str(e)  # the packages stay: they load as they are, and compile later
        if folder and (final := layout.final_folder(model, job, work)) != folder:
            refuse_to_overwrite(job.output, [final], job.force)
            work = work.rename(staging / final)
            folder = final
        destination = job.output / folder
        needs_compile = sys.platform != "darwin" or compile_error is not None
        manifest = build_manifest(model, job, described, checks, reused, layout.compile_command(destination, packages) if needs_compile else None)
        write_manifest(work / manifest_name, manifest)
        earlier = set() if folder else listed_files(job.output / manifest_name)  # --force: what the replaced run wrote
        publish(staging, job.output, [folder] if folder else names + [manifest_name])
        remove_stale(job.output, earlier - set(names))

    result = Result(model=model, paths=[destination / name for name in names], manifest_path=destination / manifest_name,
                    manifest=manifest, checks=checks)
    hint = layout.mac_hint(destination, packages) if needs_compile else None
    if hint:
        result.notes.append(f"{compile_error}; {hint}" if compile_error else hint)
    failed = [check for check in checks if not check.passed]
    if failed:
        raise VerificationError(f"verification failed for {failed[0].artifact}: {failed[0].message} (artifacts kept in {destination})")
    return result


def estimated_bytes(model: LoadedModel, plan: list[Artifact], extra_files: bool) -> int:
    """About how much a run writes: each Core ML artifact the fp16 weights it is built from, and the whole model
    in fp16 once more for the layout's other files (the ggml file)."""
    prefixes = {ArtifactKind.MEL_SPECTROGRAM: None, ArtifactKind.ENCODER: "encoder.",
                ArtifactKind.DECODER_STATEFUL: "decoder.", ArtifactKind.DECODER_CACHE_IO: "decoder."}

    def fp16_bytes(prefix: str | None) -> int:
        return 0 if prefix is None else sum(2 * tensor.numel() for name, tensor in model.state_dict.items() if name.startswith(prefix))

    return sum(fp16_bytes(prefixes.get(artifact.kind, "")) for artifact in plan) + (fp16_bytes("") if extra_files else 0)


def give_back_memory() -> None:
    """Free what the last stage left and return it to the system: glibc keeps freed heap pages of the
    evaluator's and coremltools' arrays otherwise (1.2 GB after verifying the large-v3 encoder)."""
    gc.collect()
    if sys.platform == "linux":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl)
            pass


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

"""`wconv compress`: compress packages converted earlier, as ``wconv run --compress`` would have, re-verified.

The output folder (``-o``, default ``<folder>-<spec>`` beside the packages' folder) receives
everything the packages' manifest lists, hard-linked, with the named packages replaced by their
compressed versions, each verified side by side with the package it came from against the
manifest's source (or ``--against``; the package's own checks are taken from its manifest when they
ran on the same input), and a manifest that says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..compress.apply import is_compressed, spec_target
from ..compress.report import compression_entry
from ..compress.specs import parse_spec
from ..console import StageReporter
from ..errors import InputError, VerificationError
from ..files import link_tree, publish, refuse_to_overwrite, staging_dir
from ..inspection.report import manifest_facts
from ..job import Artifact, ArtifactKind, Check, Job, target_rank
from ..manager import FamilyHooks, get_plugin_manager
from ..manifest import manifest_filename, verify_input_name, with_target, write_manifest
from ..pipeline import Result, call_stage, flatten_checks, save_model
from ..sources import load_source
from ..verify.saved import manifest_entry_for


def listed_packages(packages: list[Path], spec_text: str) -> tuple[dict, list[tuple[Path, dict]]]:
    """The manifest listing ``packages`` (all in one folder) and each package's entry; refuses what cannot be compressed."""
    needed = parse_spec(spec_text).min_target
    manifest, found = None, []
    for path in packages:
        if not (path / "Manifest.json").is_file():
            raise InputError(f"{path} is not an .mlpackage: give converted packages to compress")
        listing, entry = manifest_entry_for(path)
        if entry is None:
            raise InputError(f"no wconv manifest beside {path} lists it: convert it with `wconv run` (or compress while converting, --compress)")
        if manifest is not None and listing["_path"] != manifest["_path"]:
            raise InputError(f"{path} belongs to another conversion than {packages[0]}: compress one folder at a time")
        manifest = listing
        if entry["kind"] == ArtifactKind.MEL_SPECTROGRAM:
            raise InputError(f"{path} is a MelSpectrogram: it stays as it is (fp32 filterbank, a few hundred KB)")
        if is_compressed(path):
            raise InputError(f"{path} is already compressed: compress the fp16 package it came from")
        have = spec_target(path)
        if target_rank(have) < target_rank(needed):
            raise InputError(f"--compress {spec_text} needs {needed} but {path.name} was converted for {have}: "
                             f"convert it again with --min-target {needed}")
        found.append((path, entry))
    return manifest, found


def default_output(folder: Path, spec_text: str) -> Path:
    return folder.parent / f"{folder.name}-{re.sub(r'[^A-Za-z0-9._-]+', '-', Path(spec_text).stem)}"


def compress_saved(packages: list[Path], compress: str, output: Path | None = None, against: str | None = None,
                   family: str | None = None, verify_input: Path | None = None, min_psnr: float = 35.0, force: bool = False,
                   pm=None, reporter: StageReporter | None = None) -> Result:
    """Compress ``packages`` (of one conversion) into ``output``; see the module docstring."""
    packages = [Path(path) for path in packages]
    manifest, listed = listed_packages(packages, compress)
    folder = Path(manifest["_path"]).parent
    output = Path(output) if output else default_output(folder, compress)
    if output.resolve() == folder.resolve():
        raise InputError(f"-o {output} is the folder the packages are in: choose another output folder")
    pm = pm or get_plugin_manager()
    reporter = reporter or StageReporter()
    model = load_source(against or manifest["source"], family or manifest["family"], pm,
                        expected_sha256=None if against else manifest["checkpoint_sha256"])
    model.name = manifest["name"]
    hooks = FamilyHooks(pm, model.family)
    compressed_files = {path.name for path, _ in listed}
    entries = {entry["file"]: entry for entry in manifest["artifacts"]}
    kept_checks = [check for check in manifest["verify"] if check["artifact"] not in compressed_files]
    new_checks = []
    with staging_dir(output.parent, output.name) as staging:
        refuse_to_overwrite(output.parent, [output.name], force)
        work = staging / output.name
        work.mkdir()
        for name in entries:
            if name not in compressed_files and (folder / name).exists():
                link_tree(folder / name, work / name)
        for path, entry in listed:
            artifact = Artifact.from_entry(entry)
            job = Job(source=model.source, family=model.family, output=output, name=model.name, min_target=spec_target(path),
                      compress=compress, verify_input=verify_input, min_psnr=min_psnr)
            mlmodel = load_package(path)
            smaller = reporter.run(f"compress {path.name}", call_stage, stage="compress", caller=hooks.wconv_compress,
                                   mlmodel=mlmodel, model=model, artifact=artifact, job=job)
            reporter.run(f"save {path.name}", save_model, mlmodel=smaller, path=work / path.name)
            after = flatten_checks(reporter.run(f"verify {path.name}", call_stage, stage="verify", caller=hooks.wconv_verify,
                                                path=work / path.name, model=model, artifact=artifact, job=job))
            before = recorded_checks(manifest, path.name, verify_input) or flatten_checks(reporter.run(
                f"verify {path.name} uncompressed", call_stage, stage="verify", caller=hooks.wconv_verify, path=path,
                model=model, artifact=artifact, job=job))
            record = compression_entry(work / path.name, path, after, before)
            entries[path.name] = with_target({**entry, **manifest_facts(work / path.name),
                                              "compression": record}, job.min_target)
            new_checks.extend(after)
        result_manifest = {key: value for key, value in manifest.items() if key != "_path"}
        result_manifest.update(options={**manifest["options"], "compress": compress}, artifacts=list(entries.values()),
                               verify=kept_checks + [check.to_dict() for check in new_checks])
        write_manifest(work / manifest_filename(model.name), result_manifest)
        publish(staging, output.parent, [output.name])
    paths = [output / name for name in entries] + [output / entry["compression"]["recipe_file"] for entry in entries.values()
                                                   if "recipe_file" in entry.get("compression", {})]
    result = Result(model=model, paths=paths, manifest_path=output / manifest_filename(model.name), manifest=result_manifest,
                    checks=new_checks)
    failed = [check for check in new_checks if not check.passed]
    if failed:
        raise VerificationError(f"verification failed for {failed[0].artifact}: {failed[0].message} (artifacts kept in {output})")
    return result


def recorded_checks(manifest: dict, name: str, verify_input: Path | None) -> list[Check]:
    """The checks the manifest recorded for package ``name``, if they ran on the same input as these will."""
    if "verify_input" not in manifest or manifest["verify_input"] != verify_input_name(verify_input):
        return []
    return [Check(**check) for check in manifest["verify"] if check["artifact"] == name]


def load_package(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)

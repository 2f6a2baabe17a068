"""Verification of Core AI ``.aimodel`` artifacts (``--layout coreai``): a plugin whose ``wconv_verify`` runs them
on coreai-core's runtime with the same checks as Core ML models (encoder PSNR, decoder logits PSNR and, with a
wav ``--verify-input``, the transcript through the encoder beside the decoder).

coreai-core's bundled CPU runtime (Linux, macOS before 27) runs fp16 about 33 times slower than fp32 (326 s
for one call of the tiny encoder), so an fp16 asset is checked through its fp32 twin: the same module,
exported and converted the same way in fp32, kept in wconv's cache; a compressed asset's twin is compressed with
the same coreai-opt pass (on the fp32 weights). The checks say so. An fp32 asset, compressed or not, runs as it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..files import cache_dir
from ..hookspecs import hookimpl
from ..job import Artifact, ArtifactKind, Check, LoadedModel
from ..runtime.audio import is_audio_file
from .defaults import CHECKS, decoder_checks

FP16_SKIPPED = ("fp16 execution skipped: coreai-core's CPU runtime runs fp16 ~33x slower than fp32 (326 s per call of the "
                "tiny encoder); checked through the fp32 twin of the same graph")


def is_fp16(artifact: Artifact) -> bool:
    return any(spec["dtype"] == "float16" for spec in artifact.inputs)


def in_fp32(specs: list[dict]) -> list[dict]:
    """IO specs with fp16 tensors as fp32, fixed at their largest length (the checks run 30 s windows)."""
    return [{key: value for key, value in {**spec, "dtype": "float32" if spec["dtype"] == "float16" else spec["dtype"]}.items()
             if key != "enumerated_frames"} for spec in specs]


def fp32_twin(model: LoadedModel, artifact: Artifact, compression: str | None) -> Path:
    """The artifact converted in fp32 (same module, export and conversion) and compressed as ``compression`` names
    (a ``--compress`` spec, or None), cached by checkpoint, IO contract and spec."""
    from ..compress.coreai import compress_program
    from ..compress.specs import parse_spec
    from ..conversion.coreai import CoreAIModel, export_program, to_program

    twin = Artifact(kind=artifact.kind, filename=artifact.filename, inputs=in_fp32(artifact.inputs),
                    outputs=in_fp32(artifact.outputs), options=artifact.options)
    key = hashlib.sha256(json.dumps([model.source_sha256, twin.contract(), compression]).encode()).hexdigest()[:16]
    path = cache_dir() / "coreai-fp32" / key / artifact.filename
    if not path.is_dir():
        program = to_program(export_program(model, twin), twin)
        if compression:
            program = compress_program(program, parse_spec(compression))
        staged = path.with_name(f".partial-{path.name}")
        CoreAIModel(program).save(str(staged))
        staged.rename(path)
    return path


def compression_of(path: Path) -> str | None:
    """The ``--compress`` spec a saved asset was compressed with, or None."""
    from ..compress.report import stored_record

    return stored_record(path).get("spec")


def encoder_beside(path: Path, model: LoadedModel, fp16: bool) -> Path:
    """The encoder a decoder's transcript check runs: ``<name>-encoder.aimodel`` beside it (its fp32 twin for an fp16 one)."""
    from ..manifest import describe_io

    encoder = path.parent / f"{model.name}-encoder.aimodel"
    if not fp16:
        return encoder
    described = Artifact.from_entry({"kind": ArtifactKind.ENCODER, **describe_io(encoder)}, encoder.name)
    return fp32_twin(model, described, compression_of(encoder))


@hookimpl
def wconv_verify(path, model, artifact, job):
    path = Path(path)
    if path.suffix != ".aimodel" or artifact.kind not in CHECKS or model.reference_encoder is None:
        return None
    fp16 = is_fp16(artifact)
    compression = compression_of(path)
    run_path = fp32_twin(model, artifact, compression) if fp16 else path
    if CHECKS[artifact.kind] is decoder_checks and is_audio_file(job.verify_input):
        checks = decoder_checks(run_path, model, artifact, job, encoder_beside(path, model, fp16))
    else:
        checks = CHECKS[artifact.kind](run_path, model, artifact, job)
    return [named(check, artifact, fp16, compression) for check in checks]


def named(check: Check, artifact: Artifact, fp16: bool, compression: str | None) -> Check:
    """A check of the twin, reported under the artifact's own name."""
    check.artifact = artifact.filename
    if fp16:
        check.method = f"{check.method} (fp32 twin)"
        check.message = f"{check.message}; {FP16_SKIPPED}"
        if compression:
            check.message += f", compressed with the same coreai-opt pass ({compression}) on its fp32 weights"
    return check

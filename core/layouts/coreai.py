"""The Core AI layout (``--layout coreai``, ``pip install "wconv[coreai]"``): Core ML's successor on iOS/macOS 27.

::

    <output>/<name>-encoder.aimodel                 channels-first ANE encoder, fp16 (--audio-lengths: a function per length)
    <output>/<name>-decoder-stateful.aimodel        --decoder stateful: key/value caches as Core AI states
    <output>/<name>-decoder-cache-io.aimodel        --decoder cache-io: WhisperKit's TextDecoder contract
    <output>/<name>.manifest.json

The same shared ANE modules and IO contracts as the Core ML layouts, converted with coreai-torch. On macOS with
Xcode 27 each asset is compiled for the Neural Engine (``xcrun coreai-build compile``); elsewhere
:meth:`CoreAILayout.mac_hint` prints the command.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from ..compress.coreai import check_spec
from ..errors import ConversionError, InputError
from ..hookspecs import hookimpl
from ..job import DECODER_VARIANTS, Artifact, ArtifactKind, Job, LoadedModel
from ..runtime.coreai import require_coreai
from . import Layout
from .contracts import DECODERS, N_FRAMES, whisperkit_encoder

def in_precision(specs: list[dict], precision: str) -> list[dict]:
    """IO specs with their float tensors in ``precision``."""
    return [{**spec, "dtype": precision} if spec["dtype"].startswith("float") else spec for spec in specs]


def coreai_artifact(artifact: Artifact, filename: str, precision: str) -> Artifact:
    """A Core ML contract as a ``.aimodel`` of that name, its float IO (and states) in ``precision``."""
    options = dict(artifact.options)
    options.pop("min_target", None)  # Core AI assets target OS 27, whatever Core ML's target would be
    if "states" in options:
        options["states"] = in_precision(options["states"], precision)
    return Artifact(kind=artifact.kind, filename=filename, inputs=in_precision(artifact.inputs, precision),
                    outputs=in_precision(artifact.outputs, precision), options=options)


def compile_command(asset: Path, destination: Path, platform: str) -> list[str]:
    """Xcode 27's ahead-of-time compile of an asset for the Neural Engine of ``platform`` (macOS, iOS) into ``destination``:
    one ``<name>.<architecture>.aimodelc`` per device architecture, for OS 27 and later."""
    # Flags as Apple documents them: `--platform iOS --min-deployment-version 27.0 --output compiled/`
    # (developer.apple.com/documentation/coreai/compiling-core-ai-models-ahead-of-time) and
    # `--preferred-compute neural-engine` (apple/coreai-models skills/skills/model-authoring/references/common_issues.md)
    return ["xcrun", "coreai-build", "compile", str(asset), "--platform", platform, "--min-deployment-version", "27.0",
            "--preferred-compute", "neural-engine", "--output", str(destination)]


class CoreAILayout(Layout):
    name = "coreai"
    description = "Core AI (iOS/macOS 27): <name>-encoder.aimodel (+ --decoder) in the output; needs wconv[coreai]"
    precisions = ("float16", "float32")

    def check_options(self, job: Job) -> None:
        for option, given in (("--folder-suffix", job.folder_suffix), ("--ggml-type", job.ggml_type != "f16")):
            if given:
                raise InputError(f"{option} does not apply to --layout coreai (Core AI assets only, no ggml file, no folder): drop it")
        if job.audio_lengths and N_FRAMES not in job.audio_lengths:
            raise InputError(f"--audio-lengths must include {N_FRAMES} (the 30 s window), e.g. 1500,{N_FRAMES}")
        if job.decoder and job.decoder not in DECODER_VARIANTS.values():
            raise InputError(f"unknown decoder '{job.decoder}': choose one of stateful, cache-io")
        require_coreai()
        if job.compress:
            check_spec(job.compress)

    def plan(self, model: LoadedModel, job: Job) -> list[Artifact]:
        """The encoder (with a function per enumerated length), then the decoder ``--decoder`` names."""
        precision = job.precision or self.precisions[0]
        encoder = coreai_artifact(whisperkit_encoder(model), f"{model.name}-encoder.aimodel", precision)
        if job.audio_lengths:
            encoder.inputs[0]["enumerated_frames"] = sorted(job.audio_lengths)
        plan = [encoder]
        if job.decoder:
            decoder = DECODERS[ArtifactKind.decoder(job.decoder)](model, text_context=job.text_context)
            plan.append(coreai_artifact(decoder, f"{model.name}-decoder-{job.decoder}.aimodel", precision))
        return plan

    def compile(self, folder: Path, plan: list[Artifact]) -> list[Path]:
        """Each asset compiled for the Neural Engine beside it (Xcode 27's ``coreai-build``)."""
        if shutil.which("xcrun") is None:
            raise ConversionError("xcrun not found: install Xcode 27 to compile .aimodel assets")
        before = set(folder.iterdir())
        for artifact in plan:
            command = compile_command(folder / artifact.filename, folder, "macOS")
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr or done.stdout).strip().splitlines()[:1]
                raise ConversionError(f"xcrun coreai-build failed for {artifact.filename}: {first[0] if first else done.returncode} "
                                      "(is Xcode 27 installed and selected with xcode-select?)")
        return sorted(set(folder.iterdir()) - before)

    def mac_hint(self, folder: Path, plan: list[Artifact]) -> str:
        commands = " && ".join(shlex.join(compile_command(folder / artifact.filename, folder, "iOS")) for artifact in plan)
        return f"on a Mac with Xcode 27, for iPhone (--platform macOS for a Mac): {commands}"


@hookimpl
def wconv_register_layouts(register):
    register(CoreAILayout())

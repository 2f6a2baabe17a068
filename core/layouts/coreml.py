"""The plain Core ML layout (``--layout coreml``): the encoder whisper.cpp and pure Core ML hosts load,
an optional ``-flex`` encoder with enumerated lengths and an optional Core ML decoder, as files in the output."""

from __future__ import annotations

from ..errors import InputError
from ..hookspecs import hookimpl
from ..job import DECODER_VARIANTS, Artifact, ArtifactKind, Job, LoadedModel
from . import Layout
from .contracts import DECODERS, N_FRAMES, whispercpp_encoder


class CoreMLLayout(Layout):
    name = "coreml"
    description = "Core ML only: ggml-<name>-encoder.mlpackage (+ -flex, + --decoder) in the output"

    def check_options(self, job: Job) -> None:
        if job.folder_suffix:
            raise InputError("--folder-suffix names WhisperKit's folder: add --layout whisperkit, or drop it")
        if job.audio_lengths and N_FRAMES not in job.audio_lengths:
            raise InputError(f"--audio-lengths must include {N_FRAMES} (the 30 s window whisper.cpp always feeds), e.g. 1500,{N_FRAMES}")
        if len(set(job.audio_lengths)) == 1:
            raise InputError(f"--audio-lengths {','.join(map(str, job.audio_lengths))} gives one length, which the main encoder already has: "
                             f"add a shorter one, e.g. 1500,{N_FRAMES}, or drop the option")
        if job.decoder and job.decoder not in DECODER_VARIANTS.values():
            raise InputError(f"unknown decoder '{job.decoder}': choose one of stateful, cache-io")

    def plan(self, model: LoadedModel, job: Job) -> list[Artifact]:
        plan = [whispercpp_encoder(model)]
        if job.audio_lengths:
            plan.append(whispercpp_encoder(model, tuple(job.audio_lengths)))
        if job.decoder:
            plan.append(DECODERS[ArtifactKind.decoder(job.decoder)](model, text_context=job.text_context))
        return plan


@hookimpl
def wconv_register_layouts(register):
    register(CoreMLLayout())

"""distil-whisper family: reuse the parent's converted encoder instead of converting it again.

Distil-Whisper keeps its teacher's encoder and shrinks only the decoder, so its Core ML encoder is
the parent's. This family loads the distil checkpoint (a Transformers directory or hub id, read by
the ``hf`` family), loads the parent (a known parent by name, or ``--parent``), proves that every
encoder tensor is the same (per-tensor sha256 of the fp16 values), finds the parent's converted
encoder (in the output directory or wconv's cache, by parent name and checkpoint sha256; if there
is none it converts the parent once, through the parent's own family, into the cache) and offers it
through ``wconv_reuse``: the pipeline links it as ``ggml-<distil-name>-encoder.mlpackage``, no trace, no convert.
With ``--layout whisperkit`` the parent's ``AudioEncoder.mlpackage`` is linked when one was converted
(its IO differs from whisper.cpp's encoder); else the distil's own encoder, the same tensors, is converted.
The decoder side (ggml file, Core ML decoders) is the distil model's own. distil-large-v3.5, whose
encoder may differ from large-v3's, converts its own encoder when the tensors differ.
"""

from __future__ import annotations

import wconv

from .reuse import KNOWN_PARENTS, MAY_DIFFER, EncoderDiffers, load_parent, parent_encoder, resolve_distil

ALIASES = ("distil-whisper",)
KNOWN_MODELS = tuple(KNOWN_PARENTS)
DESCRIPTION = "distil-whisper (HF format): reuses the parent's converted encoder"


@wconv.hookimpl
def wconv_load(job):
    distil = resolve_distil(job)
    if distil is None:
        return None
    from wconv.plugins.hf_whisper import wconv_load as load_transformers

    model = load_transformers(job=job.replace(source=distil.checkpoint, family="hf"))
    model.family = "distil"
    model.name = job.name or distil.name
    if job.convert_own_encoder:
        return model
    try:
        model.parent = load_parent(model, distil.parent)
    except EncoderDiffers as e:
        if distil.name not in MAY_DIFFER:
            raise
        model.provenance["encoder_differs"] = str(e)  # known to vary between releases: convert its own encoder
    return model


@wconv.hookimpl
def wconv_reuse(model, artifact, job):
    if model.parent is None or artifact.kind is not wconv.ArtifactKind.ENCODER:
        return None
    return parent_encoder(model, artifact, job)

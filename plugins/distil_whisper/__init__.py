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
The distil and its parent may also be whisper.cpp ggml files (compared as stored, see ``proof``), and
``--parent`` a converted encoder package, proven by ``--parent-ggml`` or the manifest beside it, or
taken on the user's word with ``--trust-parent`` (recorded in the manifest).
"""

from __future__ import annotations

from pathlib import Path

import wconv

from .proof import EncoderDiffers
from .reuse import KNOWN_PARENTS, MAY_DIFFER, is_converted_encoder, load_parent, load_parent_package, parent_encoder, resolve_distil

ALIASES = ("distil-whisper",)
KNOWN_MODELS = tuple(KNOWN_PARENTS)
DESCRIPTION = "distil-whisper (HF format): reuses the parent's converted encoder"


@wconv.hookimpl
def wconv_load(job):
    distil = resolve_distil(job)
    if distil is None:
        return None
    if distil.ggml:
        from wconv.plugins.ggml_whisper import wconv_load as load_checkpoint
    else:
        from wconv.plugins.hf_whisper import wconv_load as load_checkpoint

    model = load_checkpoint(job=job.replace(source=distil.checkpoint, family="ggml" if distil.ggml else "hf"))
    model.family = "distil"
    model.name = job.name or distil.name
    if job.convert_own_encoder:
        return model
    if (job.parent_ggml or job.trust_parent) and not is_converted_encoder(distil.parent):
        raise wconv.InputError("--parent-ggml and --trust-parent go with --parent <the parent's converted encoder .mlpackage>")
    try:
        if is_converted_encoder(distil.parent):
            model.parent = load_parent_package(model, Path(distil.parent), job)
        else:
            model.parent = load_parent(model, distil.parent)
    except EncoderDiffers as e:
        if distil.name not in MAY_DIFFER:
            raise
        model.provenance["encoder_differs"] = str(e)  # known to vary between releases: convert its own encoder
    return model


@wconv.hookimpl
def wconv_reuse(model, artifact, job):
    if artifact.kind is not wconv.ArtifactKind.ENCODER or (model.parent is None and "parent_package" not in model.provenance):
        return None
    return parent_encoder(model, artifact, job)

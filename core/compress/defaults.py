"""Core's default compression: an ordinary plugin whose ``wconv_compress`` is ``trylast``.

It applies ``job.compress`` (see :mod:`wconv.compress.specs`) with ``coremltools.optimize.coreml``
to every converted artifact except the MelSpectrogram (its fp32 filterbank is small and its precision
is what it is for), and leaves models alone when ``job.compress`` is unset. ``mixed:BITS`` first
searches a recipe on real speech (:mod:`wconv.compress.mixed`). What was done is recorded in the
model's metadata under ``wconv.compression``, which the manifest and ``wconv inspect``-style tools read.
"""

from __future__ import annotations

import json

from ..console import STDERR
from ..hookspecs import hookimpl
from ..job import Artifact, ArtifactKind, Job, LoadedModel
from .apply import EMBEDDING_MIN_BITS, compress, embedding_tables, mil_program
from .specs import CompressionSpec, parse_spec

METADATA_KEY = "wconv.compression"
# coremltools#2716: 4-bit palettized stateful models built with coremltools 9.0 crash on the ANE after 100-200 predictions
STATEFUL_4BIT_WARNING = ("a 4-bit palettized stateful decoder built with coremltools 9.0 crashes on the Neural Engine "
                         "after 100-200 predictions (coremltools#2716): prefer --decoder cache-io, or another --compress")


@hookimpl(trylast=True)
def wconv_compress(mlmodel, model, artifact, job):
    if job.compress is None or artifact.kind is ArtifactKind.MEL_SPECTROGRAM:
        return None
    spec = parse_spec(job.compress)
    recipe = search_recipe(mlmodel, model, artifact, job, spec) if spec.method == "mixed" else None
    compressed = compress(mlmodel, spec, recipe, state_dict=model.state_dict)
    record = {"spec": spec.text, "method": spec.method}
    if spec.method in ("palette", "int4") and spec.bits < EMBEDDING_MIN_BITS and embedding_tables(mil_program(mlmodel)):
        record["token_embedding_bits"] = EMBEDDING_MIN_BITS
    if recipe is not None or spec.method == "recipe":
        record["recipe"] = recipe or json.loads(spec.recipe_path.read_text())
    if artifact.kind is ArtifactKind.DECODER_STATEFUL and uses_4bit_palettes(spec, record.get("recipe")):
        STDERR.print(f"warning: {STATEFUL_4BIT_WARNING}")
        record["warning"] = STATEFUL_4BIT_WARNING
    compressed.user_defined_metadata[METADATA_KEY] = json.dumps(record)
    return compressed


def uses_4bit_palettes(spec: CompressionSpec, recipe: dict | None) -> bool:
    if spec.method == "palette":
        return spec.bits == 4
    return recipe is not None and 4 in recipe["layers"].values()


def search_recipe(mlmodel, model: LoadedModel, artifact: Artifact, job: Job, spec: CompressionSpec) -> dict:
    """The mixed-bit recipe of one artifact, measured on the verification speech (``--verify-input`` or the bundled clip)."""
    import torch

    from ..conversion.defaults import artifact_target
    from ..layouts.contracts import N_FRAMES
    from ..verify.references import logit_tokens, reference_input
    from .mixed import search

    mel, described = reference_input(model.dims.n_mels, N_FRAMES, job.verify_input)
    common = dict(min_target=artifact_target(artifact, job))
    if artifact.kind is ArtifactKind.ENCODER:
        recipe = search(mlmodel, "encoder", model.dims, model.state_dict, spec.bits, mel=mel, **common)
    else:
        with torch.no_grad():
            features = model.reference_encoder(torch.from_numpy(mel)).numpy()
        recipe = search(mlmodel, "decoder", model.dims, model.state_dict, spec.bits, encoder_output=features,
                        tokens=logit_tokens(model), **common)
    recipe["measured_on"] = described
    return recipe


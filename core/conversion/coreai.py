"""Core AI conversion of the shared ANE modules: a plugin whose trace and convert hooks take the artifacts a layout
names ``*.aimodel`` (``--layout coreai``) and leave every other artifact to the Core ML defaults.

trace: the module in the artifact's precision (fp16 weights and compute by default), ``torch.export`` with
coreai-torch's decomposition table. convert: ``coreai_torch.TorchConverter`` with the artifact's IO names (and
the stateful decoder's cache buffers as Core AI states); enumerated frame counts become one static function
``main_frames_<frames>`` each (``set_static_shape_config``). The result saves as an ``.aimodel`` asset.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from ..hookspecs import hookimpl
from ..job import Artifact
from ..layouts.contracts import length_function
from .defaults import build_module, dynamic_shapes, example_inputs

AIMODEL = ".aimodel"


def is_aimodel(artifact: Artifact) -> bool:
    return artifact.filename.endswith(AIMODEL)


def float_dtype(artifact: Artifact):
    """The precision an ``.aimodel`` artifact computes in: that of its float inputs (fp16 unless ``--precision float32``)."""
    import torch

    floats = {spec["dtype"] for spec in artifact.inputs if spec["dtype"].startswith("float")}
    return torch.float32 if floats == {"float32"} else torch.float16


def export_program(model, artifact: Artifact):
    """The artifact's ANE module, in its precision, exported for coreai-torch."""
    import coreai_torch
    import torch

    dtype = float_dtype(artifact)
    module = build_module(model, artifact, dtype)
    inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in example_inputs(artifact))
    with torch.no_grad():
        exported = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes(artifact))
        return exported.run_decompositions(coreai_torch.get_decomp_table())


def to_program(exported, artifact: Artifact):
    """coreai-torch's ``AIProgram`` of an exported artifact, one static function per enumerated frame count."""
    from coreai_torch import TorchConverter

    states = [spec["name"] for spec in artifact.options.get("states", [])]
    with contextlib.redirect_stdout(sys.stderr):  # coreai-torch's progress lines, off stdout (--json)
        program = TorchConverter(mode=TorchConverter.Mode.RELEASE).add_exported_program(
            exported, input_names=[spec["name"] for spec in artifact.inputs],
            output_names=[spec["name"] for spec in artifact.outputs], state_names=states or None,
        ).to_coreai()
    spec = artifact.inputs[0]
    if frames := spec.get("enumerated_frames"):
        # one function per length, named main_<key>
        program.set_static_shape_config("main", {length_function(n).removeprefix("main_"): {spec["name"]: (*spec["shape"][:-1], n)}
                                                 for n in frames})
    return program


class CoreAIModel:
    """A converted Core AI program with the metadata surface of coremltools' ``MLModel`` (author, descriptions,
    ``user_defined_metadata``), so the postprocess stage fills it as it fills Core ML models; ``save`` writes the asset."""

    def __init__(self, program):
        self.program = program
        self.author = self.short_description = self.version = ""
        self.user_defined_metadata: dict[str, str] = {}
        self.input_description: dict[str, str] = {}
        self.output_description: dict[str, str] = {}

    def save(self, path: str) -> None:
        from coreai.runtime import AIModelAssetMetadata

        metadata = AIModelAssetMetadata()
        metadata.author = self.author
        metadata.model_description = self.short_description
        for key, value in {**self.user_defined_metadata, "wconv.version": self.version,
                           "wconv.io_descriptions": json.dumps({**self.input_description, **self.output_description})}.items():
            metadata.set_custom(key, value)
        self.program.save_asset(Path(path), metadata)


@hookimpl
def wconv_trace(model, artifact):
    return export_program(model, artifact) if is_aimodel(artifact) else None


@hookimpl
def wconv_convert(traced, artifact):
    return CoreAIModel(to_program(traced, artifact)) if is_aimodel(artifact) else None

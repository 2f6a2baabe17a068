"""The whisper.cpp hybrid layout (the default): the Core ML encoder, the ggml model file beside it, and
the macOS compile step that turns ``ggml-<model>-encoder.mlpackage`` into the ``.mlmodelc`` whisper.cpp loads."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from ..hookspecs import hookimpl
from ..job import Artifact, ArtifactKind, Job, LoadedModel
from .coreml import CoreMLLayout
from .ggml import _check_writable, ggml_file_name, vocab_from_hf_tokenizer, vocab_from_tiktoken, write_ggml
from .xcode import compile_command, compile_package


def ggml_vocab(model: LoadedModel) -> list[bytes]:
    """The model's own vocabulary (a ggml source's) or HF tokenizer when it has one, else openai-whisper's bundled tiktoken files."""
    if model.vocab is not None:
        return model.vocab
    if model.tokenizer_json:
        return vocab_from_hf_tokenizer(model.tokenizer_json)
    return vocab_from_tiktoken(model.multilingual)


class WhisperCppLayout(CoreMLLayout):
    name = "whispercpp"
    description = "whisper.cpp: ggml-<name>-encoder.mlpackage + ggml-<name>.bin (--ggml-type) in the output"

    def check_options(self, job: Job) -> None:
        super().check_options(job)
        _check_writable(job.ggml_type)  # before anything loads, not when the ggml file is written

    def extra_files(self, model: LoadedModel, job: Job) -> list[str]:
        return [ggml_file_name(model.name, job.ggml_type)]

    def write_extra_files(self, model: LoadedModel, job: Job, folder: Path) -> list[dict]:
        """``ggml-<name>[-qX_Y].bin``: whisper.cpp's decoder side."""
        path = write_ggml(folder / ggml_file_name(model.name, job.ggml_type), model.dims, model.state_dict, ggml_vocab(model), job.ggml_type)
        return [{"file": path.name, "kind": "ggml", "ggml_type": job.ggml_type}]

    def compile(self, folder: Path, plan: list[Artifact]) -> list[Path]:
        """The encoder compiled to ``.mlmodelc`` beside it, and zipped (nothing when it was reused compiled)."""
        encoder = loaded_encoder(plan)
        if encoder is None:
            return []
        compiled = compile_package(folder / encoder.filename)
        archive = shutil.make_archive(str(compiled), "zip", root_dir=folder, base_dir=compiled.name)
        return [compiled, Path(archive)]

    def compile_command(self, folder: Path, plan: list[Artifact]) -> str | None:
        encoder = loaded_encoder(plan)
        return encoder and shlex.join(compile_command(folder / encoder.filename, folder))


def loaded_encoder(plan: list[Artifact]) -> Artifact | None:
    """The fixed-length encoder whisper.cpp loads, if ``plan`` has it (not the ``-flex`` one)."""
    return next((artifact for artifact in plan if artifact.kind is ArtifactKind.ENCODER
                 and not artifact.inputs[0].get("enumerated_frames")), None)


@hookimpl
def wconv_register_layouts(register):
    register(WhisperCppLayout())

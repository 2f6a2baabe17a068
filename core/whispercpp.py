"""The whisper.cpp hybrid target: the ggml model file beside the Core ML encoder, and the macOS
compile step that turns ``ggml-<model>-encoder.mlpackage`` into the ``.mlmodelc`` whisper.cpp loads."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from .artifacts import WHISPERKIT
from .ggml import ggml_file_name, vocab_from_hf_tokenizer, vocab_from_tiktoken, write_ggml
from .job import Job, LoadedModel
from .outputs import compile_command, compile_package

def wants_ggml(job: Job) -> bool:
    """The whisper.cpp target writes a ggml file, except in WhisperKit's layout (Core ML only)."""
    return job.options.get("target", "whispercpp") == "whispercpp" and job.options.get("layout") != WHISPERKIT


def ggml_filename(model: LoadedModel, job: Job) -> str:
    return ggml_file_name(model.name, job.options.get("ggml_type", "f16"))


def ggml_vocab(model: LoadedModel) -> list[bytes]:
    """The model's own HF tokenizer when it has one, else openai-whisper's bundled tiktoken files."""
    tokenizer_json = model.extra.get("tokenizer_json")
    if tokenizer_json:
        return vocab_from_hf_tokenizer(tokenizer_json)
    return vocab_from_tiktoken(model.multilingual)


def write_ggml_model(model: LoadedModel, job: Job, folder: Path) -> Path:
    """Write ``ggml-<name>[-qX_Y].bin`` (whisper.cpp's decoder side) into ``folder``."""
    return write_ggml(folder / ggml_filename(model, job), model.dims, model.state_dict, ggml_vocab(model),
                      job.options.get("ggml_type", "f16"))


def mac_hint(package: Path) -> str:
    """What to run on a Mac to get the ``.mlmodelc`` whisper.cpp loads (Core ML cannot compile on Linux)."""
    return f"on a Mac with Xcode: {shlex.join(compile_command(package, package.parent))}"


def compile_for_whispercpp(package: Path) -> list[Path]:
    """macOS: compile the encoder to ``.mlmodelc`` beside it and zip it; returns both paths."""
    compiled = compile_package(package)
    archive = shutil.make_archive(str(compiled), "zip", root_dir=package.parent, base_dir=compiled.name)
    return [compiled, Path(archive)]

"""WhisperKit's model folder (``--layout whisperkit``): its name and the files beside the three models.

::

    <output>/<org>_<model>[_<suffix>]/        openai/whisper-base -> openai_whisper-base
        MelSpectrogram.mlpackage  AudioEncoder.mlpackage  TextDecoder.mlpackage
        config.json  generation_config.json   the source's own (Transformers dirs), else generated
        tokenizer.json  tokenizer_config.json  when the source has a tokenizer.json
        <name>.manifest.json

WhisperKit finds the models by these names (``.mlpackage`` or ``.mlmodelc``) and loads a
``tokenizer.json`` in the folder before it downloads the tokenizer of the variant it detects, so a
fine-tune with its own vocabulary runs offline. On macOS each package is also compiled to
``.mlmodelc``; elsewhere the layout's ``mac_hint`` gives the command to run on a Mac.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from ..errors import InputError
from ..hookspecs import hookimpl
from ..job import Artifact, Job, LoadedModel
from . import Layout
from ..files import tree_size
from .contracts import AUDIO_ENCODER, TEXT_DECODER, cache_io_decoder, mel_spectrogram, whisperkit_encoder
from .hf_config import write_hf_configs
from .xcode import compile_package

# tokenizer_config.json for a bare tokenizer.json: swift-transformers picks its tokenizer by tokenizer_class
TOKENIZER_CONFIG = {
    "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_prefix_space": False, "errors": "replace",
    "model_max_length": 1024,
}


def hf_source_file(model: LoadedModel, filename: str) -> Path | None:
    """A Transformers file (config.json, generation_config.json…) of the source directory, if it has one."""
    source = Path(model.source)
    config = source / "config.json"
    if not (source.is_dir() and config.is_file()):
        return None
    try:
        is_transformers = json.loads(config.read_text()).get("model_type") == "whisper"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    path = source / filename
    return path if is_transformers and path.is_file() else None


def write_folder_files(model: LoadedModel, folder: Path) -> dict[str, str]:
    """Write the config and tokenizer files into ``folder``; returns ``{file: "source" or "generated"}``."""
    written = {path.name: "generated" for path in write_hf_configs(folder, model.dims, model.multilingual, model.alignment_heads)}
    for name in list(written):
        if source := hf_source_file(model, name):
            shutil.copyfile(source, folder / name)
            written[name] = "source"
    tokenizer_json = model.tokenizer_json
    if tokenizer_json:
        shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
        written["tokenizer.json"] = "source"
        source_config = Path(tokenizer_json).parent / "tokenizer_config.json"
        if source_config.is_file():
            shutil.copyfile(source_config, folder / "tokenizer_config.json")
            written["tokenizer_config.json"] = "source"
        else:
            (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
            written["tokenizer_config.json"] = "generated"
    return written


class WhisperKitLayout(Layout):
    name = "whisperkit"
    description = "WhisperKit's model folder <org>_<model>: MelSpectrogram, AudioEncoder, TextDecoder, config and tokenizer files"

    def check_options(self, job: Job) -> None:
        for option, given in (("--decoder", job.decoder), ("--audio-lengths", job.audio_lengths), ("--ggml-type", job.ggml_type != "f16")):
            if given:
                raise InputError(f"{option} does not apply to --layout whisperkit (fixed 30 s shapes, cache-io TextDecoder, "
                                 "no ggml file): drop it, or use the default layout")

    def folder(self, model: LoadedModel, job: Job) -> str:
        """``<org>_<model>`` from the hub id, else the artifact name; ``--name`` replaces both; ``_<--folder-suffix>`` follows."""
        base = job.name or (model.repo_id.replace("/", "_") if model.repo_id else model.name)
        suffix = job.folder_suffix
        name = f"{base}_{suffix}" if suffix else base
        if "/" in name or name in ("", ".", ".."):
            raise InputError(f"'{name}' cannot name WhisperKit's model folder: give --name/--folder-suffix without '/'")
        return name

    def final_folder(self, model: LoadedModel, job: Job, staged: Path) -> str:
        """Compressed folders get Argmax's size suffix ``_<N>MB`` (AudioEncoder + TextDecoder, 10^6 bytes), unless ``--folder-suffix`` names them."""
        if not job.compress or job.folder_suffix:
            return self.folder(model, job)
        size = sum(tree_size(staged / f"{name}.mlpackage") for name in (AUDIO_ENCODER, TEXT_DECODER))
        return f"{self.folder(model, job)}_{round(size / 1e6)}MB"

    def plan(self, model: LoadedModel, job: Job) -> list[Artifact]:
        """The three models of WhisperKit's folder."""
        return [mel_spectrogram(model), whisperkit_encoder(model), cache_io_decoder(model, f"{TEXT_DECODER}.mlpackage", job.text_context)]

    def write_extra_files(self, model: LoadedModel, job: Job, folder: Path) -> list[dict]:
        return [{"file": name, "kind": "config", "origin": origin} for name, origin in write_folder_files(model, folder).items()]

    def compile(self, folder: Path, plan: list[Artifact]) -> list[Path]:
        """Each model of the folder compiled to ``.mlmodelc`` beside it."""
        return [compile_package(folder / artifact.filename) for artifact in plan]

    def compile_command(self, folder: Path, plan: list[Artifact]) -> str:
        """The one command that compiles the folder's models on a Mac (a shell loop: its variable cannot be quoted by shlex).

        WhisperKit loads ``.mlmodelc`` (or a package's inner ``model.mlmodel`` uncompiled, which Core ML refuses), so
        the folder works in WhisperKit only after it."""
        quoted = shlex.quote(str(folder))
        names = " ".join(artifact.filename.removesuffix(".mlpackage") for artifact in plan)
        return f'for m in {names}; do xcrun coremlcompiler compile {quoted}/"$m".mlpackage {quoted}; done'


@hookimpl
def wconv_register_layouts(register):
    register(WhisperKitLayout())

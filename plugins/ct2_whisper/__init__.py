"""CTranslate2 (faster-whisper) family: a model directory with model.bin, config.json and a
vocabulary, read by wconv's own parser and named the openai-whisper way; a hub id such as
``Systran/faster-whisper-base`` is fetched into huggingface_hub's cache first.

Artifact name: the directory (or repo) name, lowercased, without a leading ``faster-whisper-`` or
``whisper-`` and a trailing ``-ct2`` (``faster-whisper-large-v3`` -> ``large-v3``)."""

from __future__ import annotations

import re
from pathlib import Path

import wconv

from .ct2_format import load_ct2_whisper

ALIASES = ("faster-whisper", "ctranslate2")
KNOWN_MODELS = ("<dir with model.bin>", "Systran/faster-whisper-<size>")
DESCRIPTION = "CTranslate2 / faster-whisper model directories (model.bin, config.json)"

HUB_FILES = ["model.bin", "config.json", "tokenizer.json", "vocabulary.*"]


def artifact_name(path: Path) -> str:
    name = path.name.lower()
    name = re.sub(r"^(faster-whisper-|whisper-)", "", name)
    name = re.sub(r"-ct2$", "", name)
    return re.sub(r"[^a-z0-9._-]", "-", name) or "model"


def model_directory(source: str, explicit: bool) -> Path | None:
    """The local model directory for ``source``, downloading a hub id when the family was chosen."""
    path = Path(source)
    if (path / "model.bin").is_file() or (explicit and path.exists()):
        return path
    if explicit and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(snapshot_download(source, allow_patterns=HUB_FILES))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise wconv.InputError(f"cannot fetch CTranslate2 model '{source}' from the hub ({type(e).__name__}); "
                                   "check the id, your network or HF_HUB_OFFLINE, or pass a local directory") from e
    if explicit:
        raise wconv.InputError(f"{source} is not a CTranslate2 model directory: pass a folder with model.bin and config.json")
    return None


@wconv.hookimpl
def wconv_load(job):
    directory = model_directory(job.source, explicit=job.family is not None)
    if directory is None:
        return None
    ct2 = load_ct2_whisper(directory)
    return wconv.LoadedModel(
        family="ct2",
        name=artifact_name(directory.resolve()),
        dims=ct2.dims,
        state_dict=ct2.state_dict,
        source=str(directory.resolve()),
        source_sha256=ct2.source_sha256,
        reference_encoder=wconv.LazyEncoder(ct2.dims, ct2.state_dict),
        multilingual=ct2.is_multilingual,
        alignment_heads=ct2.alignment_heads,
        repo_id=wconv.hub_repo_id(directory),
        tokenizer_json=ct2.tokenizer_json,
    )

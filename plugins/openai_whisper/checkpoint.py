"""Find and read openai-whisper checkpoints (always ``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from wconv import InputError
from wconv import sha256_file

OFFICIAL_MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo",
)


def resolve_checkpoint(source: str, explicit: bool) -> tuple[Path | None, str]:
    """(checkpoint path, model name) for an official name or a local file; (None, "") if not ours.

    Official names download through openai-whisper's cache (``~/.cache/whisper``) once.
    With ``--family openai`` given, an unknown name or missing file is an error, not a pass.
    """
    if source in OFFICIAL_MODELS or source in ("large", "turbo"):
        import whisper

        root = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "whisper")
        try:
            path = whisper._download(whisper._MODELS[source], root, in_memory=False)
        except OSError as e:
            raise InputError(f"cannot download openai-whisper model '{source}' ({e}); pass a local .pt checkpoint instead") from e
        return Path(path), source
    path = Path(source)
    if path.suffix == ".pt" or (explicit and path.exists()):
        if not path.is_file():
            raise InputError(f"checkpoint {path} does not exist: give an openai-whisper .pt file or one of {', '.join(OFFICIAL_MODELS)}")
        return path, path.stem
    if explicit:
        raise InputError(f"unknown openai-whisper model '{source}': use one of {', '.join(OFFICIAL_MODELS)} or a .pt file")
    return None, ""


# openai-whisper names whose Hugging Face mirror (openai/whisper-<name>) is named otherwise
HUB_NAMES = {"large-v1": "large", "large": "large-v3", "turbo": "large-v3-turbo"}


def hub_repo_id_of_official(source: str) -> str | None:
    """``openai/whisper-<size>``, the hub id of an official model name (None for a local file)."""
    if source in OFFICIAL_MODELS or source in HUB_NAMES:
        return f"openai/whisper-{HUB_NAMES.get(source, source)}"
    return None


def load_checkpoint(path: Path):
    """(ModelDimensions, canonical state dict, sha256) of an openai-format .pt file."""
    from whisper.model import ModelDimensions

    try:
        checkpoint = mapped_load(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        raise InputError(f"cannot read checkpoint {path}: it is truncated or not a torch file ({str(e).splitlines()[0][:120]}); re-download or re-save it") from e
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise InputError(f"{path} is not an openai-whisper checkpoint (expected a dict with 'dims' and 'model_state_dict')")
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as e:
        raise InputError(f"{path} has malformed 'dims': {e}") from e
    return dims, dict(checkpoint["model_state_dict"]), sha256_file(path)


def mapped_load(path: Path):
    """``torch.load`` with the tensors memory-mapped from the file: pages are read when a stage uses them
    and are the kernel's to drop, so a 3 GB checkpoint is never copied into the process whole.
    Files in torch's pre-1.6 format cannot be mapped and are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def official_alignment_heads(name: str, dims) -> list[list[int]] | None:
    """openai-whisper's published cross-attention heads for word timing, as [layer, head] pairs."""
    import base64
    import gzip

    import numpy as np
    import whisper

    dump = whisper._ALIGNMENT_HEADS.get(name)
    if dump is None:
        return None
    mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool).reshape(dims.n_text_layer, dims.n_text_head)
    return [[int(layer), int(head)] for layer, head in zip(*np.nonzero(mask))]

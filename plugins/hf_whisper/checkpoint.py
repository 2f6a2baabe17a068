"""Find and read Hugging Face Transformers Whisper checkpoints: a local directory or a hub id.

Weights are read without Transformers' loader: safetensors first; a ``pytorch_model.bin`` only
through ``torch.load(..., weights_only=True)``. Hub ids go through huggingface_hub's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

import wconv
from wconv import InputError, sha256_file

from .mapping import TIED_HEAD, TOKEN_EMBEDDING, hf_to_canonical, unsupported_settings

ARCHITECTURE = "WhisperForConditionalGeneration"
# (index of a sharded checkpoint, single file), in order of preference
WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
HUB_METADATA = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
HUB_WEIGHTS = (  # tried in order until one brings weights
    ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"],
    ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"],
)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".gguf"}


def artifact_name(repo_id: str) -> str:
    """The artifact base name of a hub id or directory name (the rule is in the package docstring)."""
    org, _, name = repo_id.rpartition("/")
    if org.lower() == "openai" and name.lower().startswith("whisper-"):
        name = name[len("whisper-"):]
    return re.sub(r"[^a-z0-9._-]", "-", name.lower())


def repo_id_of(directory: Path) -> str:
    """The hub id of a snapshot in HF's cache (``models--org--name/snapshots/<commit>``), else the directory name."""
    return wconv.hub_repo_id(directory) or directory.resolve().name


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` that is not a checkpoint file name (``models/tiny.pt`` is a missing file, not a repo)."""
    return bool(HUB_ID.fullmatch(source)) and Path(source).suffix.lower() not in CHECKPOINT_SUFFIXES


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub itself reads it only once, at import)."""
    import huggingface_hub

    return huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def read_whisper_config(directory: Path) -> dict:
    """The config.json of a Whisper speech-to-text model in ``directory``; InputError saying why not."""
    if not directory.is_dir():
        raise InputError(f"{directory} is a file, not a Hugging Face model directory (config.json and model.safetensors)")
    path = directory / "config.json"
    if not path.is_file():
        raise InputError(f"{directory} has no config.json: it is not a Hugging Face Transformers model directory")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); re-download the model") from e
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a JSON object; re-download the model")
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    if model_type != "whisper" or not isinstance(architectures, list) or (architectures and ARCHITECTURE not in architectures):
        found = f"model_type {model_type!r}" + (f" and architectures {architectures}" if architectures else "")
        raise InputError(f"{directory} is not a Whisper speech-to-text model: its config.json has {found}, "
                         f"the hf family reads {ARCHITECTURE}")
    return config


def resolve_source(source: str, explicit: bool) -> tuple[Path, str] | None:
    """(local model directory, artifact name) for a directory or hub id; None if ``source`` is not ours.

    Without ``--family`` only directories with a Whisper config.json and ``org/name`` ids are
    claimed; with it, anything else is an InputError.
    """
    path = Path(source).expanduser()
    if path.exists():
        try:
            read_whisper_config(path)
        except InputError:
            if explicit:
                raise
            return None
        return path, artifact_name(repo_id_of(path))
    if looks_like_hub_id(source):
        return fetch_from_hub(source), artifact_name(source)
    if explicit:
        raise InputError(f"'{source}' is neither a local directory nor a Hugging Face hub id (org/name)")
    return None


def fetch_from_hub(repo_id: str) -> Path:
    """The cached snapshot of ``repo_id`` with its config and weights, downloaded if needed."""
    directory = hub_snapshot(repo_id, HUB_METADATA)
    read_whisper_config(directory)
    for patterns in HUB_WEIGHTS:
        directory = hub_snapshot(repo_id, patterns)
        if any((directory / name).is_file() for names in WEIGHT_FILES for name in names):
            break
    return directory


def hub_snapshot(repo_id: str, patterns: list[str]) -> Path:
    """``snapshot_download`` of the files matching ``patterns``, as one-line InputErrors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = hub_offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        if offline:
            raise InputError(f"Hugging Face model '{repo_id}' is not in the local cache and HF_HUB_OFFLINE is set: "
                             "download it once with network access, or pass a local directory") from e
        raise InputError(f"cannot reach the Hugging Face hub for '{repo_id}' and it is not in the local cache "
                         f"({describe(e.__cause__ or e)}): check the network, or pass a local directory") from e
    except (OSError, ValueError) as e:
        raise InputError(f"cannot download Hugging Face model '{repo_id}' ({describe(e)})") from e


def describe(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {textwrap.shorten(lines[0], 200, placeholder=' …')}" if lines else type(error).__name__


@dataclass
class HFCheckpoint:
    """An HF Whisper checkpoint, read: its config, dims, canonical weights and HF-named encoder weights."""

    config: object
    dims: object
    state_dict: dict
    encoder_state: dict
    sha256: str
    alignment_heads: list | None
    tokenizer_json: Path | None


def read_checkpoint(directory: Path) -> HFCheckpoint:
    """Read config, generation config and weights of the model in ``directory`` (and find its tokenizer.json)."""
    from transformers import WhisperConfig

    settings = read_whisper_config(directory)
    try:
        config = WhisperConfig.from_dict(settings)
        problems = unsupported_settings(config)
    except Exception as e:  # transformers checks the fields' types in its own ways
        raise InputError(f"{directory / 'config.json'} is not a valid WhisperConfig ({describe(e)}); re-download the model") from e
    if problems:
        raise InputError(f"{directory}: openai-whisper's architecture cannot express {', '.join(problems)}")
    files = weight_files(directory)
    hf_state = {}
    for path in files:
        hf_state.update(read_weights(path))
    head = hf_state.pop(TIED_HEAD, None)
    if head is not None and not (TOKEN_EMBEDDING in hf_state and torch.equal(head, hf_state[TOKEN_EMBEDDING])):
        raise InputError(f"{directory}: {TIED_HEAD} differs from {TOKEN_EMBEDDING}; whisper.cpp and openai-whisper "
                         "tie the output head to the token embedding, so this model cannot be converted")
    state_dict, unmatched = hf_to_canonical(hf_state)
    if unmatched:
        raise InputError(f"{directory}: tensors with no openai-whisper counterpart: {', '.join(sorted(unmatched)[:3])}")
    tokenizer_json = directory / "tokenizer.json"
    prefix = "model.encoder."
    encoder_state = {name[len(prefix):]: tensor for name, tensor in hf_state.items() if name.startswith(prefix)}
    return HFCheckpoint(
        config=config,
        dims=wconv.dims_from_config(config),
        state_dict=state_dict,
        encoder_state=encoder_state,
        sha256=weights_sha256(files),
        alignment_heads=read_alignment_heads(directory),
        tokenizer_json=tokenizer_json if tokenizer_json.is_file() else None,
    )


def weight_files(directory: Path) -> list[Path]:
    """The weight file(s) to read, sorted by name: safetensors if present, else pytorch_model.bin."""
    for index_name, single_name in WEIGHT_FILES:
        index = directory / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, AttributeError) as e:
                raise InputError(f"{index} is not a weight index (no 'weight_map'): re-download the model") from e
            return [directory / shard for shard in sorted(shards)]
        if (directory / single_name).is_file():
            return [directory / single_name]
    raise InputError(f"{directory} has no model.safetensors or pytorch_model.bin (nor a sharded index)")


def read_weights(path: Path) -> dict:
    """The tensors of one safetensors or pytorch_model.bin file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot read {path}: missing, truncated or not a weight file ({describe(e)}); re-download it") from e
    weights = wconv.load_torch_file(path, resave="re-save it as safetensors where you trust it: "
                                    "model.save_pretrained(dir, safe_serialization=True)")
    if not isinstance(weights, dict):
        raise InputError(f"{path} holds a {type(weights).__name__}, not a state dict")
    return weights


def weights_sha256(files: list[Path]) -> str:
    """sha256 of the one weight file, or of the concatenated hex digests of the shards in name order."""
    digests = [sha256_file(path) for path in files]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def read_alignment_heads(directory: Path) -> list | None:
    """The [layer, head] pairs of generation_config.json, if it has them."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return None
    try:
        heads = json.loads(path.read_text()).get("alignment_heads")
    except (ValueError, AttributeError) as e:
        raise InputError(f"{path} is not a JSON object ({e}); re-download the model") from e
    return [list(pair) for pair in heads] if heads else None


class HFReferenceEncoder:
    """Transformers' own ``WhisperEncoder`` in fp32 (mel -> last_hidden_state), built on first call.

    It loads the checkpoint's HF-named tensors by assignment, so fp32 weights are shared with the
    canonical state dict rather than copied.
    """

    def __init__(self, config, encoder_state: dict):
        self.config = config
        self.encoder_state = encoder_state
        self._encoder = None

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if self._encoder is None:
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            with torch.device("meta"):
                encoder = WhisperEncoder(self.config)
            weights = {name: tensor.float() for name, tensor in self.encoder_state.items()}
            encoder.load_state_dict(weights, strict=True, assign=True)
            self._encoder = encoder.eval()
        with torch.no_grad():
            return self._encoder(mel.float()).last_hidden_state

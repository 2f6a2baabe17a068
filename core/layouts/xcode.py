"""Compiling ``.mlpackage`` to the ``.mlmodelc`` Core ML loads: Xcode's ``coremlcompiler``, macOS only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import ConversionError


def compile_command(package: Path, destination: Path) -> list[str]:
    return ["xcrun", "coremlcompiler", "compile", str(package), str(destination)]


def compile_package(package: Path) -> Path:
    """macOS: compile an ``.mlpackage`` to the ``.mlmodelc`` beside it (Xcode's coremlcompiler)."""
    if shutil.which("xcrun") is None:
        raise ConversionError("xcrun not found: install the full Xcode (not only the command line tools) to compile .mlmodelc")
    done = subprocess.run(compile_command(package, package.parent), capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        raise ConversionError(f"xcrun coremlcompiler failed for {package.name}: {first[0] if first else done.returncode} "
                              "(is the full Xcode installed and selected with xcode-select?)")
    return package.with_suffix(".mlmodelc")

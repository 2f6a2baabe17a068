"""Write artifacts so that nothing is lost: stage in a temp dir beside the output, rename at the end;
compile them to ``.mlmodelc`` on macOS."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ConversionError, InputError

STAGING_PREFIX = ".wconv-staging-"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def refuse_to_overwrite(output: Path, names: list[str], force: bool) -> None:
    """Fail (exit 2) before any work when an output exists and ``--force`` was not given."""
    if force:
        return
    existing = [name for name in names if (output / name).exists()]
    if existing:
        raise InputError(f"{output / existing[0]} already exists: pass --force to overwrite it, or choose another --output")


@contextmanager
def staging_dir(output: Path):
    """A temp dir inside ``output`` (created if needed); removed, with ``output`` if we made it, on error."""
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output))
    except OSError as e:
        raise InputError(f"cannot write to output directory {output}: {e.strerror}; choose a writable --output") from e
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(output.iterdir()):
            output.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, output: Path, names: list[str]) -> list[Path]:
    """Move staged files/dirs into ``output``, replacing older versions only now, at the very end."""
    published = []
    for name in names:
        target = output / name
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=".wconv-old-", dir=output))
            os.replace(target, trash / name)
            os.replace(staging / name, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging / name, target)
        published.append(target)
    return published


def link_or_copy(source: str, target: str) -> None:
    """Hard-link a file (same bytes, no extra space); copy it where links cannot cross file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_tree(source: Path, target: Path) -> None:
    """Re-use a converted package under a new name: its files hard-linked (or copied) into ``target``."""
    shutil.copytree(source, target, copy_function=link_or_copy)


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

"""Files: staging beside the output and renaming at the end (nothing is lost), hard links, sha256,
wconv's cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

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
    """Re-use a converted package (or a file) under a new name: its files hard-linked (or copied) into ``target``."""
    if Path(source).is_dir():
        shutil.copytree(source, target, copy_function=link_or_copy)
    else:
        link_or_copy(str(source), str(target))


def cache_dir() -> Path:
    """wconv's cache: ``$WCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/wconv``, else ``~/.cache/wconv``."""
    if explicit := os.getenv("WCONV_CACHE_DIR"):
        return Path(explicit)
    return Path(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "wconv"


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (a package), or of the file itself."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

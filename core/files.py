"""Files: staging beside the output and renaming at the end (nothing is lost), one run per model and
output at a time, hard links, sha256, wconv's cache folder."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

STAGING_PREFIX = ".wconv-staging-"
STAGING_GRACE_SECONDS = 5  # a staging dir this young may not be locked by its run yet


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
def staging_dir(output: Path, name: str = "", space_needed=None):
    """A temp dir inside ``output`` (created if needed), locked while this run lives; removed, with ``output``
    if we made it, on error. A live run of the same ``name`` in ``output`` is refused; dead runs' dirs are removed.

    A full disk becomes one InputError with the space ``space_needed()`` (bytes) estimates the run needs.
    """
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=output))
        lock = os.open(staging, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"cannot write to output directory {output}: {e.strerror}; choose a writable --output") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        claim_output(output, staging, name)
        yield staging
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(output.iterdir()):
            output.rmdir()
        if (full := full_device(e)) is not None:
            raise disk_full_error(full or str(output), output, space_needed) from e
        raise
    else:
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(lock)


def claim_output(output: Path, staging: Path, name: str) -> None:
    """Refuse when a live run (its staging dir locked) writes ``name`` into ``output``; remove dead runs' staging dirs."""
    from .console import STDERR

    for other in sorted(output.glob(f"{STAGING_PREFIX}*")):
        if other == staging or not other.is_dir():
            continue
        if is_locked(other):
            if other.name[len(STAGING_PREFIX):].rpartition("-")[0] == name:
                raise InputError(f"another wconv run is writing {name} into {output} now: wait for it to end, "
                                 "or choose another --output")
        elif time.time() - other.stat().st_mtime > STAGING_GRACE_SECONDS:
            shutil.rmtree(other, ignore_errors=True)
            STDERR.print(f"removed {other}, left by a wconv run that did not finish", soft_wrap=True)


def is_locked(directory: Path) -> bool:
    """Is ``directory`` locked by a live process (a running wconv's staging dir)?"""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)


def full_device(error: BaseException | None) -> str | None:
    """Where the disk was full ("" if the error does not say) if ``error`` or what caused it says so;
    shutil.copytree reports it as text."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(error.filename or "")
        if isinstance(error, shutil.Error) and "No space left on device" in str(error):
            return next((dst for _, dst, why in error.args[0] if "No space left" in str(why)), "")
        error = error.__cause__ or error.__context__
    return None


def disk_full_error(where: str, output: Path, space_needed=None) -> InputError:
    free = shutil.disk_usage(output if output.exists() else output.parent).free
    needed = f"this run needs about {space_needed() / 1e6:.0f} MB and " if space_needed else ""
    return InputError(f"no space left on device writing {where}: {needed}{free / 1e6:.0f} MB are free in {output}; "
                      "free some space or choose another --output (nothing was written)")


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
        readable_by_all(target)
        published.append(target)
    return published


def readable_by_all(path: Path) -> None:
    """Give a published file or tree the modes a plain ``open()`` would (0644/0755 under umask 022), not the
    0600/0700 of the temp dirs coremltools saves through."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def remove_stale(output: Path, names: set[str]) -> None:
    """Delete the files or trees ``names`` (plain names in ``output``: what an earlier run wrote and this one did not)."""
    for name in names:
        target = output / name
        if Path(name).name != name or name.startswith(".") or not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


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

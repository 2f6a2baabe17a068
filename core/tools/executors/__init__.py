"""Where `wconv batch` runs its jobs: ``local`` (a spawned process per job) and ``ray`` (a Ray task per job),
both a ``wconv.tools.batch.Executor``. May import wconv.tools.batch; Ray only when that executor starts."""

from __future__ import annotations

from ..batch import Executor


def make_executor(name: str, parallel: int | None = None, address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); ``parallel`` caps the jobs running at once."""
    if name == "ray":
        from .ray_cluster import RayExecutor

        return RayExecutor(parallel, address)
    from .local import LocalExecutor

    return LocalExecutor(parallel or 1)

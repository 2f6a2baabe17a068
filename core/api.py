"""The Python API: ``wconv.api.convert(job)`` runs the pipeline and raises WconvError subclasses."""

from __future__ import annotations

from .job import Job
from .pipeline import Result, run


def convert(job: Job | None = None, pm=None, **fields) -> Result:
    """Convert one model. Pass a :class:`Job` or its fields (``source=``, ``family=``, ``output=``…)."""
    return run(job or Job(**fields), pm)

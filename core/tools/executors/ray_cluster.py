"""The Ray executor: each job is one Ray task in a worker process of its own (``max_calls=1``, no retries),
requesting the memory :mod:`wconv.tools.job_memory` estimates for its model, so Ray places it on a node
that can hold it. Stage labels come back through a Ray queue; a worker that dies is reported in one line.

The cluster is the one ``ray.init`` in this process already joined, else ``address`` (``--address``),
else Ray's own rules (``RAY_ADDRESS``, then a cluster started on this machine with ``ray start``);
with none of these, a local cluster is started for the batch and shut down after it. Every node must
see the manifest's folder and the outputs at the same paths (a shared file system): workers write
there through the same staging-and-rename as ``wconv run``. Ray prints notices (a worker died…) on the
driver's stdout: while the executor is entered, stdout is stderr, so that ``--json`` lines stay alone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
import time
from contextlib import ExitStack, redirect_stdout
from typing import Iterator

from ...errors import InputError
from ..batch import FAILED, BatchJob, Event, Executor, Outcome, convert_job, one_line
from ..job_memory import GIB, estimate_memory

POLL_SECONDS = 0.25


def run_on_worker(batch_job: BatchJob, stages) -> Outcome:
    """The Ray task: convert one job, putting (job index, stage label) on the ``stages`` queue."""
    return convert_job(batch_job, lambda label: stages.put_nowait((batch_job.index, label)))


def answers(address: str) -> bool:
    """Whether something listens at a ``host:port`` address (other forms, ``ray://…``, ``auto``: left to Ray)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return True
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return False
    return True


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, parallel: int | None = None, address: str | None = None):
        if importlib.util.find_spec("ray") is None:  # refused before any job runs
            raise InputError('--executor ray needs Ray: pip install "wconv[ray]"')
        self.parallel = parallel
        self.address = address
        self.cleanup = ExitStack()  # what __exit__ undoes: stdout, and the connection if this executor made it
        self.description = "ray (no job submitted)"

    def plan(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "a running cluster of this machine, else a local one started for the batch"
        cap = f", at most {self.parallel} jobs at a time" if self.parallel else ""
        return f"ray: {where}{cap}"

    def __enter__(self) -> "RayExecutor":
        import ray

        with ExitStack() as cleanup:
            cleanup.enter_context(redirect_stdout(sys.stderr))
            started = False
            if not ray.is_initialized():
                started = self.join(ray)
                cleanup.callback(ray.shutdown)
            nodes = [node for node in ray.nodes() if node["Alive"]]
            self.node_memory = max(node["Resources"].get("memory", 0) for node in nodes)
            resources = ray.cluster_resources()
            origin = "started for this batch" if started else "running"
            self.description = (f"ray, cluster at {ray.get_runtime_context().gcs_address} ({origin}): {len(nodes)} node"
                                f"{'s' if len(nodes) > 1 else ''}, {resources.get('CPU', 0):g} CPUs, "
                                f"{resources.get('memory', 0) / GIB:.1f} GiB memory")
            self.cleanup = cleanup.pop_all()
        return self

    def join(self, ray) -> bool:
        """Connect to the cluster the address rules name, or start a local one; True if started."""
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        address = self.address or os.environ.get("RAY_ADDRESS")
        try:
            if address and not answers(address):  # Ray itself retries an address that does not answer for minutes
                raise ConnectionError("nothing listens there")
            ray.init(address=address or "auto", **quiet)
            return False
        except ConnectionError as e:
            if address:
                raise InputError(f"no Ray cluster answers at {address} (--address or RAY_ADDRESS): {one_line(str(e))}; start one "
                                 "with `ray start --head`, or give neither to run a local one") from None
        ray.init(**quiet)
        return True

    def __exit__(self, *exc) -> None:
        self.cleanup.close()

    def run(self, jobs: list[BatchJob]) -> Iterator[Event]:
        import ray
        from ray.util.queue import Queue

        stages = Queue()
        task = ray.remote(max_calls=1, max_retries=0)(run_on_worker)
        waiting = list(jobs)
        running: dict[object, tuple[BatchJob, float]] = {}
        try:
            while waiting or running:
                while waiting and (self.parallel is None or len(running) < self.parallel):
                    batch_job = waiting.pop(0)
                    memory = estimate_memory(batch_job.job, batch_job.folder).bytes
                    if memory > self.node_memory:
                        yield Event(batch_job.index, outcome=Outcome(batch_job.index, batch_job.job.source, FAILED, error=(
                            f"needs {memory / GIB:.1f} GiB of memory and the largest Ray node offers {self.node_memory / GIB:.1f} GiB: "
                            "add a node with more memory (`ray start --memory BYTES`)")))
                        continue
                    ref = task.options(memory=memory, name=f"wconv-batch-job-{batch_job.index}").remote(batch_job, stages)
                    running[ref] = (batch_job, time.monotonic())
                    yield Event(batch_job.index, "submitted")
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS) if running else ([], [])
                for index, label in stages.get_nowait_batch(stages.qsize()):
                    yield Event(index, f"running: {label}")
                for ref in ready:
                    batch_job, submitted = running.pop(ref)
                    outcome, died = self.outcome_of(ray, ref, batch_job)
                    outcome.seconds = round(time.monotonic() - submitted, 1)
                    yield Event(batch_job.index, outcome=outcome, died=died)
        finally:  # stopped early (Ctrl-C): a cluster that stays up must not go on converting
            for ref in running:
                ray.cancel(ref, force=True)
            stages.shutdown(force=True)

    @staticmethod
    def outcome_of(ray, ref, batch_job: BatchJob) -> tuple[Outcome, bool]:
        """The task's Outcome, or a failed one saying why its worker died (and True: it left its staging dir)."""
        try:
            return ray.get(ref), False
        except ray.exceptions.RayError as e:
            reason = one_line(str(e)).split(". ")[0]
            kind = "out of memory" if isinstance(e, ray.exceptions.OutOfMemoryError) else "worker died"
            return Outcome(batch_job.index, batch_job.job.source, FAILED, error=f"Ray {kind}: {type(e).__name__}: {reason}"), True

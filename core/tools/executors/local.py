"""The local executor: each job in a spawned process of this machine, ``parallel`` at a time, reporting
over a pipe; a process that ends without an outcome (crash, OOM kill) is reported by its exit code."""

from __future__ import annotations

import multiprocessing
import signal
import time
from multiprocessing.connection import wait
from typing import Iterator

from ..batch import FAILED, BatchJob, Event, Executor, Outcome, convert_job


def work(batch_job: BatchJob, connection) -> None:
    """Child process entry: send ("stage", label) messages, then ("outcome", Outcome)."""
    try:
        outcome = convert_job(batch_job, lambda label: connection.send(("stage", label)))
    except KeyboardInterrupt:
        return  # the staging dir is already gone; the parent is stopping too
    connection.send(("outcome", outcome))


class Worker:
    """A spawned process running one batch job, and the pipe it reports on."""

    def __init__(self, context, batch_job: BatchJob):
        self.batch_job = batch_job
        self.outcome: Outcome | None = None
        self.connection, child_end = context.Pipe(duplex=False)
        self.process = context.Process(target=work, args=(batch_job, child_end), name=f"wconv-batch-job-{batch_job.index}")
        self.started = time.monotonic()
        self.process.start()
        child_end.close()  # so that recv() raises EOFError once the child has ended

    def finish(self) -> Outcome:
        """The outcome the child sent, or why it sent none; after the child has closed the pipe."""
        self.process.join()
        self.connection.close()
        outcome = self.outcome or Outcome(self.batch_job.index, self.batch_job.job.source, FAILED,
                                          error=exit_reason(self.process.exitcode))
        outcome.seconds = round(time.monotonic() - self.started, 1)
        return outcome


def exit_reason(exitcode: int) -> str:
    """Why a child ended without an outcome: its exit code, or the signal that killed it."""
    if exitcode >= 0:
        return f"process exited with code {exitcode}"
    name = signal.Signals(-exitcode).name
    return f"process killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, parallel: int = 1):
        self.parallel = parallel
        self.description = f"local, {parallel} process{'es' if parallel > 1 else ''} at a time"

    def run(self, jobs: list[BatchJob]) -> Iterator[Event]:
        context = multiprocessing.get_context("spawn")
        queued = list(reversed(jobs))
        workers: dict[object, Worker] = {}
        while queued or workers:
            while queued and len(workers) < self.parallel:
                worker = Worker(context, queued.pop())
                workers[worker.connection] = worker
                yield Event(worker.batch_job.index, "running")
            for connection in wait(list(workers)):
                worker = workers[connection]
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    del workers[connection]
                    yield Event(worker.batch_job.index, outcome=worker.finish(), died=worker.outcome is None)
                    continue
                if kind == "stage":
                    yield Event(worker.batch_job.index, f"running: {payload}")
                else:
                    worker.outcome = payload

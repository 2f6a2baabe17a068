"""`wconv batch`: the conversions listed in a TOML manifest, each in its own process.

    output = "dist"                # default output dir, relative to the manifest
    [defaults]                     # settings every job starts from
    verify = false
    [[job]]
    model = "checkpoints/a.pt"     # + family, output, name, plugins, any convert() option

A job runs with the manifest's folder as working directory, so relative paths resolve there and a
``plugins`` module may sit beside the manifest. A job is *up to date*, and skipped without loading
the model, when its output dir holds a manifest of the same model (and name, if given) with the
job's options, all its artifacts and only passed checks (at least one if the job verifies), and
the local checkpoint file still has the recorded sha256 (a local directory: no file newer than the
manifest; hub ids and model names: the model string is all that is compared). A stale result of
the same job is replaced; other existing files only with ``force``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import tomllib
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..api import OPTION_NAMES, build_job
from ..console import StageReporter, quiet_libraries
from ..errors import InputError, WconvError
from ..files import STAGING_PREFIX, sha256_file
from ..job import JOB_DEFAULTS, Job
from ..manifest import manifests_in, read_manifest
from ..pipeline import Result, run


def is_string(value) -> bool:
    return isinstance(value, str)


def is_string_list(value) -> bool:
    return isinstance(value, list) and all(map(is_string, value))


# Settings of a job that are not convert() options, with what their values must be.
JOB_SETTINGS = {"model": (is_string, "a string"), "family": (is_string, "a string"), "output": (is_string, "a string"),
                "plugins": (is_string_list, "a list of module names")}
DONE, UP_TO_DATE, FAILED = "done", "up to date", "failed"
STATUS_STYLES = {DONE: "green", UP_TO_DATE: "cyan", FAILED: "red"}
TOP_LEVEL_KEYS = ("output", "defaults", "job")
JOB_KEYS = tuple(JOB_SETTINGS) + OPTION_NAMES
CHECKSUM_CACHE = ".wconv-checksums.json"
STAGING_GLOB = STAGING_PREFIX + "*"


@dataclass(frozen=True)
class BatchJob:
    """One ``[[job]]`` of a manifest (``index`` counts from 1), ready to run in a child process."""

    index: int
    job: Job
    plugins: tuple[str, ...]
    folder: Path


@dataclass
class Outcome:
    """How one batch job ended (its ``to_dict`` is the job's ``--json`` line)."""

    job: int
    model: str
    status: str
    artifacts: list[str] = field(default_factory=list)
    manifest: str | None = None
    psnr: list[float] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return f"{FAILED}: {self.error}" if self.status == FAILED else self.status


def load_batch(path: Path, force: bool = False) -> list[BatchJob]:
    """Read and check a whole manifest; the first problem is an InputError naming the job and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(f"cannot read batch manifest {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid TOML: {e}") from e
    check_keys(data, TOP_LEVEL_KEYS, "batch manifest")
    defaults = data.get("defaults", {})
    entries = data.get("job", [])
    if not isinstance(defaults, dict):
        raise InputError(f"{path}: 'defaults' must be a table ([defaults])")
    if not entries or not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InputError(f"{path} lists no jobs: add [[job]] tables with a 'model' key")
    check_keys(defaults, JOB_KEYS, "[defaults]")
    folder = path.resolve().parent
    jobs: list[BatchJob] = []
    writers: dict[tuple, int] = {}
    for index, entry in enumerate(entries, 1):
        check_keys(entry, JOB_KEYS, f"job {index}")
        settings = {"output": data.get("output", "models"), **defaults, **entry, **({"force": True} if force else {})}
        batch_job = make_batch_job(index, settings, folder)
        job = batch_job.job
        first = writers.setdefault((job.source, job.name, job.output), index)
        if first != index:
            raise InputError(f"job {index} would write the same artifacts as job {first} (same model and output): give it another output or name")
        jobs.append(batch_job)
    return jobs


def check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(allowed)}"
            raise InputError(f"{where}: unknown key '{key}' ({hint})")


def make_batch_job(index: int, settings: dict, folder: Path) -> BatchJob:
    """The BatchJob for one job's merged settings; output resolves against the manifest's folder."""
    where = f"job {index}"
    if "model" not in settings:
        raise InputError(f"{where}: missing key 'model'")
    for key, (valid, described) in JOB_SETTINGS.items():
        if key in settings and not valid(settings[key]):
            raise InputError(f"{where}: '{key}' must be {described}")
    options = dict(settings)
    plugins = tuple(options.pop("plugins", ()))
    model, family, output = options.pop("model"), options.pop("family", None), options.pop("output")
    try:
        job = build_job(model, family, folder / output, **options)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return BatchJob(index=index, job=job, plugins=plugins, folder=folder)


# ---- in the child process -------------------------------------------------------------------


class StageForwarder(StageReporter):
    """A pipeline reporter that sends each stage's label to the batch instead of drawing on stderr."""

    def __init__(self, send: Callable[[str], None]):
        self.send = send

    def run(self, label: str, call, **kwargs):
        self.send(label)
        return call(**kwargs)


def work(batch_job: BatchJob, connection) -> None:
    """Child process entry: send ("stage", label) messages, then ("outcome", Outcome)."""
    quiet_libraries()
    os.chdir(batch_job.folder)
    sys.path.insert(0, str(batch_job.folder))
    try:
        outcome = execute(batch_job, lambda label: connection.send(("stage", label)))
    except KeyboardInterrupt:
        return  # the staging dir is already gone; the parent is stopping too
    except WconvError as e:
        outcome = Outcome(batch_job.index, batch_job.job.source, FAILED, error=one_line(str(e)))
    except Exception as e:
        outcome = Outcome(batch_job.index, batch_job.job.source, FAILED, error=one_line(f"{type(e).__name__}: {e}"))
    connection.send(("outcome", outcome))


def execute(batch_job: BatchJob, send_stage: Callable[[str], None]) -> Outcome:
    """Skip the job if it is up to date, else convert it, replacing a stale result of the same job."""
    job = batch_job.job
    earlier = earlier_manifests(job)
    if not job.force:
        send_stage("check")
        current = next((manifest for manifest in earlier if is_up_to_date(job, manifest)), None)
        if current:
            return outcome_of_manifest(batch_job, current)
    from ..manager import get_plugin_manager

    pm = get_plugin_manager(extra=[import_plugin(name) for name in batch_job.plugins])
    result = run(job.replace(force=job.force or bool(earlier)), pm, StageForwarder(send_stage))
    return outcome_of_result(batch_job, result)


def import_plugin(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise InputError(f"cannot import plugin module '{name}': {e}") from e


def earlier_manifests(job: Job) -> list[dict]:
    """Manifests in the job's output dir that a run of this model (and name, if given) wrote."""
    found = []
    for path in manifests_in(job.output):
        with suppress(InputError, OSError):
            manifest = read_manifest(path)
            if manifest.get("model") == job.source and job.name in (None, manifest.get("name")):
                found.append(manifest)
    return found


def is_up_to_date(job: Job, manifest: dict) -> bool:
    """Whether ``manifest`` records what ``job`` would produce now, with every artifact in place
    (and verified, if the job verifies)."""
    return (recorded_options(manifest) == json.loads(json.dumps(job.describe_options(), default=str))
            and (bool(manifest["verify"]) or not job.verify)
            and all(check["passed"] for check in manifest["verify"])
            and all((Path(manifest["_path"]).parent / entry["file"]).exists() for entry in manifest["artifacts"])
            and source_unchanged(Path(job.source), manifest, job.output))


def recorded_options(manifest: dict) -> dict:
    """The options a manifest records, as :meth:`Job.describe_options` would give them now.

    Manifests older than an option lack its default; before ``--layout coreml`` it was ``--target coreml``.
    """
    recorded = {name: JOB_DEFAULTS[name] for name in ("layout", "ggml_type")} | manifest["options"]
    if recorded.pop("target", None) == "coreml":
        recorded["layout"] = "coreml"
    return recorded


def source_unchanged(source: Path, manifest: dict, output: Path) -> bool:
    """A local file still hashes to the manifest's checkpoint_sha256; a local directory has no
    newer file than the manifest; anything else (hub id, model name) matched by name already."""
    if source.is_file():
        return checkpoint_sha256(source, output) == manifest["checkpoint_sha256"]
    if source.is_dir():
        written = Path(manifest["_path"]).stat().st_mtime
        return all(path.stat().st_mtime <= written for path in source.iterdir() if path.is_file())
    return True


def checkpoint_sha256(path: Path, output: Path) -> str:
    """sha256 of a checkpoint file, cached in ``output`` by (path, size, mtime) so reruns need not
    read it again. Concurrent jobs may drop each other's entries: that costs a rehash, nothing more."""
    cache_path = output / CHECKSUM_CACHE
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key, {}).get("stamp") == stamp:
        return cache[key]["sha256"]
    digest = sha256_file(path)
    cache[key] = {"stamp": stamp, "sha256": digest}
    partial = cache_path.with_name(f"{CHECKSUM_CACHE}.{os.getpid()}")
    with suppress(OSError):
        partial.write_text(json.dumps(cache, indent=1))
        os.replace(partial, cache_path)
    return digest


def outcome_of_manifest(batch_job: BatchJob, manifest: dict) -> Outcome:
    return Outcome(batch_job.index, batch_job.job.source, UP_TO_DATE,
                   artifacts=[str(Path(manifest["_path"]).parent / entry["file"]) for entry in manifest["artifacts"]],
                   manifest=manifest["_path"],
                   psnr=[check["metrics"]["psnr"] for check in manifest["verify"] if "psnr" in check["metrics"]])


def outcome_of_result(batch_job: BatchJob, result: Result) -> Outcome:
    return Outcome(batch_job.index, batch_job.job.source, DONE,
                   artifacts=[str(path) for path in result.paths], manifest=str(result.manifest_path),
                   psnr=[check.metrics["psnr"] for check in result.checks if "psnr" in check.metrics])


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---- in the parent process ------------------------------------------------------------------


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


class Board:
    """The live table: one row per job with its state (queued, running: <stage>, or how it ended)."""

    def __init__(self, jobs: list[BatchJob]):
        self.jobs = jobs
        self.states = {batch_job.index: Text("queued", style="dim") for batch_job in jobs}

    def set(self, index: int, state: str, style: str = "yellow") -> None:
        self.states[index] = Text(state, style=style)

    def __rich__(self) -> Table:
        table = Table("#", "model", title="wconv batch", title_justify="left")
        table.add_column("state", no_wrap=True, overflow="ellipsis")  # failure reasons are printed in full at the end
        for batch_job in self.jobs:
            table.add_row(str(batch_job.index), batch_job.job.source, self.states[batch_job.index])
        return table


class StagingJanitor:
    """Removes the staging dirs of jobs killed mid-way (a job that ends normally removes its own).

    Whose staging dir is whose is unknown, so a dir is swept only once no job of this batch is
    running in it; then every staging dir that appeared since the batch started is a dead job's.
    Staging dirs that were there before are left alone: another process may still own them.
    """

    def __init__(self, jobs: list[BatchJob]):
        self.before = {job.job.output: set(job.job.output.glob(STAGING_GLOB)) for job in jobs}
        self.dirty: set[Path] = set()

    def job_died(self, output: Path) -> None:
        self.dirty.add(output)

    def sweep(self, busy: set[Path]) -> None:
        for output in self.dirty - busy:
            for leftover in set(output.glob(STAGING_GLOB)) - self.before[output]:
                shutil.rmtree(leftover, ignore_errors=True)
        self.dirty &= busy


def run_batch(jobs: list[BatchJob], parallel: int = 1, console: Console | None = None,
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``jobs``, ``parallel`` at a time, each in its own spawned process; show a live table and
    a summary on ``console`` (stderr by default). Returns the outcomes in job order."""
    console = console or Console(stderr=True)
    context = multiprocessing.get_context("spawn")
    board, janitor = Board(jobs), StagingJanitor(jobs)
    queued = list(reversed(jobs))
    workers: dict[object, Worker] = {}
    outcomes: dict[int, Outcome] = {}
    with Live(board, console=console, transient=True, refresh_per_second=4, redirect_stdout=False):
        while queued or workers:
            while queued and len(workers) < parallel:
                worker = Worker(context, queued.pop())
                workers[worker.connection] = worker
                board.set(worker.batch_job.index, "running")
            for connection in wait(list(workers)):
                worker = workers[connection]
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    del workers[connection]
                    outcome = worker.finish()
                    if worker.outcome is None:
                        janitor.job_died(worker.batch_job.job.output)
                    janitor.sweep({other.batch_job.job.output for other in workers.values()})
                    outcomes[outcome.job] = outcome
                    board.set(outcome.job, outcome.describe(), STATUS_STYLES[outcome.status])
                    if on_outcome:
                        on_outcome(outcome)
                    continue
                if kind == "stage":
                    board.set(worker.batch_job.index, f"running: {payload}")
                else:
                    worker.outcome = payload
    ordered = [outcomes[batch_job.index] for batch_job in jobs]
    print_summary(console, ordered)
    return ordered


def print_summary(console: Console, outcomes: list[Outcome]) -> None:
    """A table of how each job ended, then each failure's reason on a line of its own."""
    table = Table("#", "model", "status", "time", "artifacts", title="wconv batch summary", title_justify="left")
    for outcome in outcomes:
        table.add_row(str(outcome.job), outcome.model, Text(outcome.status, style=STATUS_STYLES[outcome.status]),
                      f"{outcome.seconds:.1f} s", ", ".join(Path(path).name for path in outcome.artifacts))
    console.print(table)
    for outcome in outcomes:
        if outcome.status == FAILED:
            console.print(Text(f"job {outcome.job} ({outcome.model}) failed: {outcome.error}"), soft_wrap=True)

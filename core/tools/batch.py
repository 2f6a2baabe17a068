"""`wconv batch`: the conversions listed in a TOML manifest, each in its own process (locally or on Ray).

    output = "dist"                # default output dir, relative to the manifest
    executor = "local"             # or "ray" (`--executor` wins)
    [defaults]                     # settings every job starts from
    verify = false
    [[job]]
    model = "checkpoints/a.pt"     # + family, output, name, plugins, any convert() option

Every job's options are checked before the first job runs. A job runs with the manifest's folder as
working directory, so relative paths resolve there and a ``plugins`` module may sit beside the
manifest. A job is *up to date*, and skipped before it is handed to an executor, when its output dir
holds a manifest of the same model (and name, if given) with the job's options, all its artifacts
and only passed checks (at least one if the job verifies), and the local checkpoint file still has
the recorded sha256 (a local directory: no file newer than the manifest; hub ids and model names:
the model string is all that is compared). A stale result of the same job is replaced; other
existing files only with ``force``. Executors (``wconv.tools.executors``) run the other jobs and
report :class:`Event`s.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import shutil
import sys
import tomllib
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..api import OPTION_NAMES, build_job
from ..console import StageReporter, quiet_libraries
from ..errors import InputError, WconvError
from ..files import STAGING_PREFIX, sha256_file
from ..job import JOB_DEFAULTS, MIN_TARGETS, Job
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
TOP_LEVEL_KEYS = ("output", "executor", "defaults", "job")
EXECUTORS = ("local", "ray")
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


@dataclass(frozen=True)
class Batch:
    """A whole manifest: its jobs and the executor it asks for (None: not said)."""

    jobs: list[BatchJob]
    executor: str | None = None


def load_batch(path: Path, force: bool = False) -> Batch:
    """Read and check a whole manifest: a problem of the file is an InputError; problems of jobs are
    collected, one line per bad job, into one InputError before anything runs."""
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
    executor = data.get("executor")
    if executor is not None and executor not in EXECUTORS:
        raise InputError(f"{path}: unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if not isinstance(defaults, dict):
        raise InputError(f"{path}: 'defaults' must be a table ([defaults])")
    if not entries or not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InputError(f"{path} lists no jobs: add [[job]] tables with a 'model' key")
    check_keys(defaults, JOB_KEYS, "[defaults]")
    folder = path.resolve().parent
    jobs: list[BatchJob] = []
    problems: list[str] = []
    writers: dict[tuple, int] = {}
    checker = JobChecker(folder)
    for index, entry in enumerate(entries, 1):
        settings = {"output": data.get("output", "models"), **defaults, **entry, **({"force": True} if force else {})}
        try:
            check_keys(entry, JOB_KEYS, f"job {index}")
            batch_job = make_batch_job(index, settings, folder)
            checker.check(batch_job)
        except InputError as e:
            problems.append(str(e) if str(e).startswith(f"job {index}") else f"job {index}: {e}")
            continue
        job = batch_job.job
        first = writers.setdefault((job.source, job.name, job.output), index)
        if first != index:
            problems.append(f"job {index} would write the same artifacts as job {first} (same model and output): give it another output or name")
        jobs.append(batch_job)
    if problems:
        raise InputError("\n".join(problems))
    return Batch(jobs, executor)


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


class JobChecker:
    """Checks a job's options as its run would, before anything loads: layout (and the options it
    refuses), family, minimum target, plugin modules. One plugin manager per set of plugin modules."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.managers: dict[tuple[str, ...], object] = {}

    def check(self, batch_job: BatchJob) -> None:
        from ..layouts import select_layout
        from ..manager import resolve_family

        job = batch_job.job
        if job.min_target not in MIN_TARGETS:
            raise InputError(f"unknown min_target '{job.min_target}': use one of {', '.join(MIN_TARGETS)}")
        pm = self.plugin_manager(batch_job.plugins)
        select_layout(pm, job)
        if job.family:
            resolve_family(pm, job.family)

    def plugin_manager(self, plugins: tuple[str, ...]):
        from ..manager import get_plugin_manager

        if plugins not in self.managers:
            with importable_from(self.folder):
                self.managers[plugins] = get_plugin_manager(extra=[import_plugin(name) for name in plugins])
        return self.managers[plugins]


@contextmanager
def importable_from(folder: Path):
    """Modules in ``folder`` (a manifest's plugins) can be imported inside the block."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


# ---- in the child process -------------------------------------------------------------------


class StageForwarder(StageReporter):
    """A pipeline reporter that sends each stage's label to the batch instead of drawing on stderr."""

    def __init__(self, send: Callable[[str], None]):
        self.send = send

    def run(self, label: str, call, **kwargs):
        self.send(label)
        return call(**kwargs)


def convert_job(batch_job: BatchJob, send_stage: Callable[[str], None]) -> Outcome:
    """A worker's whole task: convert the job in the manifest's folder, replacing a stale result of the
    same job; any error becomes a failed Outcome. ``send_stage`` gets each stage's label."""
    quiet_libraries()
    os.chdir(batch_job.folder)
    sys.path.insert(0, str(batch_job.folder))
    job = batch_job.job
    try:
        from ..manager import get_plugin_manager

        pm = get_plugin_manager(extra=[import_plugin(name) for name in batch_job.plugins])
        result = run(job.replace(force=job.force or bool(earlier_manifests(job))), pm, StageForwarder(send_stage))
    except WconvError as e:
        return Outcome(batch_job.index, job.source, FAILED, error=one_line(str(e)))
    except Exception as e:
        return Outcome(batch_job.index, job.source, FAILED, error=one_line(f"{type(e).__name__}: {e}"))
    return outcome_of_result(batch_job, result)


def up_to_date_outcome(batch_job: BatchJob) -> Outcome | None:
    """The outcome of a job whose earlier result is up to date (not forced), without running it; else None."""
    job = batch_job.job
    if job.force:
        return None
    source = batch_job.folder / job.source  # as the job's process, which runs in the manifest's folder, sees it
    current = next((manifest for manifest in earlier_manifests(job) if is_up_to_date(job, manifest, source)), None)
    return outcome_of_manifest(batch_job, current) if current else None


def import_plugin(name: str):
    try:
        return importlib.import_module(name)
    except (ImportError, ValueError) as e:  # ValueError: an empty or relative name
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


def is_up_to_date(job: Job, manifest: dict, source: Path) -> bool:
    """Whether ``manifest`` records what ``job`` would produce now from ``source`` (its model as a path),
    with every artifact in place (and verified, if the job verifies)."""
    return (recorded_options(manifest) == json.loads(json.dumps(job.describe_options(), default=str))
            and (bool(manifest["verify"]) or not job.verify)
            and all(check["passed"] for check in manifest["verify"])
            and all((Path(manifest["_path"]).parent / entry["file"]).exists() for entry in manifest["artifacts"])
            and source_unchanged(source, manifest, job.output))


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


def dry_run_rows(jobs: list[BatchJob]) -> list[dict]:
    """What each job would do (``run``, ``skip: up to date``) and the memory it needs, for ``--dry-run``."""
    from .job_memory import estimate_memory

    rows = []
    for batch_job in jobs:
        estimate = estimate_memory(batch_job.job, batch_job.folder)
        rows.append({"job": batch_job.index, "model": batch_job.job.source,
                     "action": f"skip: {UP_TO_DATE}" if up_to_date_outcome(batch_job) else "run",
                     "memory_gib": estimate.gib, "parameters": estimate.parameters, "dims_from": estimate.dims_from})
    return rows


# ---- in the parent process ------------------------------------------------------------------


@dataclass
class Event:
    """What an executor reports about one job: a new ``state`` for the table, or its ``outcome``
    (``died``: its process ended without cleaning up, so its staging dir is swept)."""

    index: int
    state: str = ""
    outcome: Outcome | None = None
    died: bool = False


class Executor:
    """Runs batch jobs and reports on them in :class:`Event` objects; the two executors are in ``wconv.tools.executors``.

    Entered (``with``) only when there is a job to run: it acquires what it runs on there and
    releases it on exit. ``description`` says where the jobs ran, for the batch summary.
    """

    name = ""
    description = ""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, jobs: list[BatchJob]) -> Iterator[Event]:
        """Run every job, yielding a state Event when one starts or reaches a stage and one Event with its Outcome when it ends."""
        raise NotImplementedError

    def plan(self) -> str:
        """Where the jobs would run, for ``--dry-run`` (nothing is started)."""
        return self.description


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


class Progress:
    """Shows a batch as it runs: the live table on a terminal, else one line per finished job; collects
    the outcomes and sweeps what dead jobs left."""

    def __init__(self, jobs: list[BatchJob], console: Console, on_outcome: Callable[[Outcome], None] | None):
        self.jobs = {batch_job.index: batch_job for batch_job in jobs}
        self.console, self.on_outcome = console, on_outcome
        self.board, self.janitor = Board(jobs), StagingJanitor(jobs)
        self.live = Live(self.board, console=console, transient=True, refresh_per_second=4, redirect_stdout=False) if console.is_terminal else None
        self.outcomes: dict[int, Outcome] = {}
        self.running: dict[int, Path] = {}

    def __enter__(self):
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()

    def show(self, event: Event) -> None:
        if event.outcome is None:
            self.running[event.index] = self.jobs[event.index].job.output
            self.board.set(event.index, event.state)
            return
        outcome = event.outcome
        self.running.pop(outcome.job, None)
        if event.died:
            self.janitor.job_died(self.jobs[outcome.job].job.output)
        self.janitor.sweep(set(self.running.values()))
        self.outcomes[outcome.job] = outcome
        self.board.set(outcome.job, outcome.describe(), STATUS_STYLES[outcome.status])
        if not self.live:
            self.console.print(Text(f"job {outcome.job} ({outcome.model}): {outcome.describe()} ({outcome.seconds:.1f} s)"), soft_wrap=True)
        if self.on_outcome:
            self.on_outcome(outcome)


def run_batch(jobs: list[BatchJob], executor: Executor, console: Console | None = None,
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``jobs`` on ``executor``: jobs up to date are
    skipped first, the others handed to it. Shows the jobs and a summary on ``console`` (stderr by
    default). Returns the outcomes in job order."""
    console = console or Console(stderr=True)
    with Progress(jobs, console, on_outcome) as progress:
        for batch_job in jobs:
            if outcome := up_to_date_outcome(batch_job):
                progress.show(Event(batch_job.index, outcome=outcome))
        pending = [batch_job for batch_job in jobs if batch_job.index not in progress.outcomes]
        if pending:
            with executor:
                for event in executor.run(pending):
                    progress.show(event)
    ordered = [progress.outcomes[batch_job.index] for batch_job in jobs]
    print_summary(console, ordered, executor.description)
    return ordered


def print_summary(console: Console, outcomes: list[Outcome], ran_on: str) -> None:
    """A table of how each job ended, where they ran, then each failure's reason on a line of its own."""
    table = Table("#", "model", "status", "time", "artifacts", title="wconv batch summary", title_justify="left",
                  caption=f"executor: {ran_on}", caption_justify="left")
    for outcome in outcomes:
        table.add_row(str(outcome.job), outcome.model, Text(outcome.status, style=STATUS_STYLES[outcome.status]),
                      f"{outcome.seconds:.1f} s", ", ".join(Path(path).name for path in outcome.artifacts))
    console.print(table)
    for outcome in outcomes:
        if outcome.status == FAILED:
            console.print(Text(f"job {outcome.job} ({outcome.model}) failed: {outcome.error}"), soft_wrap=True)

"""What wconv shows on the terminal: each pipeline stage with rich, and libraries kept quiet."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console

STDERR = Console(stderr=True)


class StageReporter:
    """Shows each stage on stderr with rich: a spinner while it runs, its time when done.

    A pipeline run inside a stage (distil converting its parent) prints its stages without a
    second spinner: rich allows one live display per console.
    """

    active = 0

    def __init__(self, console: Console | None = None):
        self.console = console or STDERR

    def run(self, label: str, call, **kwargs):
        started = time.perf_counter()
        StageReporter.active += 1
        try:
            if StageReporter.active == 1:
                with self.console.status(f"[bold]{label}[/bold] …"):
                    result = call(**kwargs)
            else:
                result = call(**kwargs)
        finally:
            StageReporter.active -= 1
        self.console.print(f"[green]✓[/green] {label} [dim]({time.perf_counter() - started:.1f} s)[/dim]")
        return result


# coremltools logs missing macOS runtimes at import; it imports torchao when installed (coreai-opt pulls it), which logs
# CUDA kernels it cannot load and a deprecated pytree registration; coreai-opt logs each weight its pass skips
QUIET_LOGGERS = ("coremltools", "torchao", "torch.utils._pytree", "coreai_opt")


def quiet_libraries() -> None:
    """Libraries log at import and draw progress bars: keep stderr to wconv's lines."""
    import logging
    import os
    import warnings

    if "--debug" in sys.argv:
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@contextmanager
def libraries_quiet():
    """For the Python API: what :func:`quiet_libraries` does for the CLI (no coremltools log lines at import,
    no warnings, no tqdm progress bars), undone when the block ends."""
    import logging
    import warnings

    from tqdm import std

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels, init = [logger.level for logger in loggers], std.tqdm.__dict__["__init__"]

    def silent_init(self, *args, **kwargs):
        init.__get__(self, type(self))(*args, **{**kwargs, "disable": True})

    for logger in loggers:
        logger.setLevel(logging.ERROR)
    std.tqdm.__init__ = silent_init
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        std.tqdm.__init__ = init
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)

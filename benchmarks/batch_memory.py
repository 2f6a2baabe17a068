"""The memory a batch job asks Ray for, against the peak a whole `wconv run` of that size really reaches.

    python benchmarks/batch_memory.py --size tiny small large-v3      # large-v3: run it as `flock /work/locks/bigmem …`

For each size: a random-weight fp16 openai checkpoint with the real dimensions (as the published
checkpoints are fp16), then `wconv run` on it in a process of its own (default layout, verification
on, as a batch job runs by default); its peak RSS is the kernel's maxrss for that process (os.wait4).
The estimate is wconv.tools.job_memory's, from the same checkpoint's dims; README records the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_fp16_checkpoint(path: Path, size: str) -> Path:
    import torch

    from wconv.tools.random_checkpoints import random_state_dict, real_dims

    dims = real_dims(size)
    state = {name: tensor.half() for name, tensor in random_state_dict(dims).items()}
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": state}, path)
    return path


def measure_run(checkpoint: Path, output: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS in GiB, exit code) of `wconv run CHECKPOINT -o OUTPUT`."""
    started = time.perf_counter()
    process = subprocess.Popen([str(Path(sys.executable).with_name("wconv")), "run", str(checkpoint), "-o", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - started, usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status)


def main():
    from wconv.api import build_job
    from wconv.tools.job_memory import estimate_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["tiny", "small"], choices=["tiny", "base", "small", "medium", "large-v3"])
    args = parser.parse_args()
    table = Table("model", "parameters", "wconv run s", "exit", "measured peak GiB", "estimate GiB", "estimate / peak",
                  title="Batch job memory: Ray's request (estimate) vs a whole `wconv run` (measured, same run)")
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.size:
            checkpoint = write_fp16_checkpoint(Path(workdir) / f"{size}.pt", size)
            estimate = estimate_memory(build_job(checkpoint))
            seconds, peak, exitcode = measure_run(checkpoint, Path(workdir) / size)
            table.add_row(size, f"{estimate.parameters / 1e6:.0f} M", f"{seconds:.0f}", str(exitcode), f"{peak:.2f}",
                          f"{estimate.gib:.2f}", f"{estimate.gib / peak:.2f}")
            checkpoint.unlink()
    Console(width=150).print(table)


if __name__ == "__main__":
    main()

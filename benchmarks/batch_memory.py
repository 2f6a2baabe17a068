"""The memory a batch job asks Ray for, against the peak a whole `wconv run` of that size really reaches.

    python benchmarks/batch_memory.py --size tiny small large-v3 --layout whispercpp whisperkit

For each size: a random-weight fp16 openai checkpoint with the real dimensions (`wconv sample-checkpoint
--fp16`, in a process of its own, written once into --checkpoints), then `wconv run` on it in a process of
its own (verification on, as a batch job runs by default) per layout; its peak RSS is the kernel's maxrss
for that process (os.wait4). The checkpoints are not made in this process: a child's maxrss starts from its
parent's high-water mark. The estimate is wconv.tools.job_memory's for the same job; README records the table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from run_large import WCONV, checkpoint, measure


def main():
    from wconv.api import build_job
    from wconv.tools.job_memory import estimate_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["tiny", "small"], choices=["tiny", "base", "small", "medium", "large-v3"])
    parser.add_argument("--layout", nargs="+", default=["whispercpp"], choices=["whispercpp", "whisperkit"])
    parser.add_argument("--checkpoints", type=Path, default=Path(tempfile.gettempdir()) / "wconv-bench",
                        help="Where the random checkpoints are written once and reused.")
    args = parser.parse_args()
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    table = Table("model", "layout", "parameters", "wconv run s", "measured peak GiB", "estimate GiB", "estimate / peak",
                  title="Batch job memory: Ray's request (estimate) vs a whole `wconv run` (measured, same run)")
    for size in args.size:
        source = checkpoint(size, args.checkpoints)
        for layout in args.layout:
            estimate = estimate_memory(build_job(source, layout=layout))
            with tempfile.TemporaryDirectory() as output:
                seconds, peak, _ = measure([*WCONV, "run", str(source), "-o", output, "--layout", layout])
            table.add_row(size, layout, f"{estimate.parameters / 1e6:.0f} M", f"{seconds:.0f}", f"{peak:.2f}",
                          f"{estimate.gib:.2f}", f"{estimate.gib / peak:.2f}")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()

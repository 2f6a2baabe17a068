"""The whole `wconv run` per stage, time and peak memory, beside whisper.cpp's method, same run.

    python benchmarks/run_large.py --size tiny base small
    python benchmarks/run_large.py --size large-v3 --no-whispercpp    # processes of ~8 GiB: one such job at a time

Each size gets a random-weight fp16 openai-format checkpoint with the real dimensions
(`wconv sample-checkpoint --fp16`, like the official files; written once into --checkpoints).
Three processes per size, each measured whole (wall time; peak RSS is the child's own VmHWM, from
``wait4``): wconv's encoder conversion alone (`wconv run --layout coreml --no-verify`: load ->
trace -> convert -> save), the whole default `wconv run` (encoder, ggml file, verification), and
whisper.cpp's method for the encoder (`convert_encoder.py`'s: openai-whisper's encoder,
``torch.jit.trace`` with its checks, ``ct.convert`` fp16). Stage times are wconv's own stage lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
WCONV = [sys.executable, "-c", "from wconv.cli import main; main()"]  # honours PYTHONPATH (a baseline tree)
STAGE_LINE = re.compile(r"✓ (\w+).* \(([\d.]+) s\)")


def measure(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GiB, stderr) of one child process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        stderr.seek(0)
        errors = stderr.read()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{errors[-2000:]}")
    return wall, usage.ru_maxrss / 2**20, errors + output


def stage_times(log: str) -> dict[str, float]:
    """Seconds per stage kind (load, trace, convert, save, verify, write…) from wconv's stage lines."""
    times: dict[str, float] = {}
    for stage, seconds in STAGE_LINE.findall(log):
        times[stage] = times.get(stage, 0.0) + float(seconds)
    return times


def checkpoint(size: str, folder: Path) -> Path:
    path = folder / f"{size}-fp16.pt"
    if not path.exists():
        subprocess.run([*WCONV, "sample-checkpoint", str(path), "--dims", size, "--fp16"], check=True, capture_output=True)
    return path


def whispercpp_method(size: str, workdir: str) -> tuple[float, float]:
    wall, peak, _ = measure([sys.executable, str(HERE / "convert_encoder.py"), "--child", "whispercpp", size, workdir])
    return wall, peak


STAGES = ("load", "trace", "convert", "save", "verify", "write")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["tiny", "base"], choices=["tiny", "base", "small", "medium", "large-v3"])
    parser.add_argument("--checkpoints", type=Path, default=Path(tempfile.gettempdir()) / "wconv-bench",
                        help="Where the random checkpoints are written once and reused.")
    parser.add_argument("--no-whispercpp", action="store_true", help="Skip whisper.cpp's method (537 s for large-v3).")
    args = parser.parse_args()
    args.checkpoints.mkdir(parents=True, exist_ok=True)

    table = Table("model", "process", *[f"{s} s" for s in STAGES], "wall s", "peak GiB",
                  title="wconv run per stage and whole process vs whisper.cpp's method (same machine, same run)")
    results = {}
    for size in args.size:
        source = checkpoint(size, args.checkpoints)
        rows = {}
        with tempfile.TemporaryDirectory() as workdir:
            for what, options in (("encoder only", ["--layout", "coreml", "--no-verify"]), ("whole run", [])):
                wall, peak, log = measure([*WCONV, "run", str(source), "-o", f"{workdir}/{len(rows)}", *options])
                rows[what] = (stage_times(log), wall, peak)
            if not args.no_whispercpp:
                wall, peak = whispercpp_method(size, workdir)
                rows["whisper.cpp encoder"] = ({}, wall, peak)
        for what, (times, wall, peak) in rows.items():
            table.add_row(size, what, *[f"{times[s]:.1f}" if s in times else "" for s in STAGES], f"{wall:.1f}", f"{peak:.2f}")
        table.rows[-1].end_section = True
        results[size] = {what: {"stages": times, "wall_s": wall, "peak_gib": peak} for what, (times, wall, peak) in rows.items()}
    Console(width=160).print(table)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Reference evaluator speed and memory against PyTorch, on the same converted encoder, same run.

    python benchmarks/evaluate.py --size base large-v3

For each size: a random-weight checkpoint with the real dimensions is converted by wconv (encoder
only), then in separate processes (so each peak RSS is its own) wconv's numpy evaluator runs the
saved .mlpackage on 30 s of log-mel, and openai-whisper's PyTorch fp32 encoder runs the same input.
Targets on a 2-core machine: base <= 10 s, large-v3 <= 120 s with peak memory <= 2x the fp16 weights.
On a busy machine set OPENBLAS_NUM_THREADS=1 (two BLAS threads fighting for two cores slow GEMMs a lot).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(runner: str, folder: str, size: str) -> dict:
    import numpy as np

    logging.getLogger("coremltools").setLevel(logging.ERROR)

    mel = np.random.default_rng(0).standard_normal((1, 128 if size == "large-v3" else 80, 3000)).astype(np.float32)
    baseline = peak_rss_gib()
    started = time.perf_counter()
    if runner == "evaluator":
        from wconv.runtime.evaluator import MLProgramEvaluator

        model = MLProgramEvaluator.load(Path(folder) / f"ggml-{size}-encoder.mlpackage")
        loaded = time.perf_counter()
        model.predict({"logmel_data": mel})
    else:
        import torch

        from wconv.plugins.openai_whisper.checkpoint import load_checkpoint
        from wconv.runtime.reference import LazyEncoder

        dims, state, _ = load_checkpoint(Path(folder) / f"{size}.pt")
        encoder = LazyEncoder(dims, state)
        loaded = time.perf_counter()
        encoder(torch.from_numpy(mel))
    return {"load_s": loaded - started, "predict_s": time.perf_counter() - loaded, "peak_gib": peak_rss_gib(), "baseline_gib": baseline}


def measure(runner: str, folder: str, size: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", runner, folder, size], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def convert(folder: Path, size: str) -> float:
    """Write a random checkpoint and its converted encoder; returns the fp16 weight size in GiB."""
    import wconv
    from wconv.tools.random_checkpoints import write_random_checkpoint

    checkpoint = write_random_checkpoint(folder / f"{size}.pt", size)
    wconv.convert(str(checkpoint), family="openai", output=folder, layout="coreml", verify=False)
    weights = folder / f"ggml-{size}-encoder.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return weights.stat().st_size / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["base"], choices=["tiny", "base", "small", "medium", "large-v3"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    table = Table("model", "fp16 weights GiB", "evaluator load s", "evaluator predict s", "evaluator peak GiB (above imports)",
                  "PyTorch fp32 s", "PyTorch peak GiB", "evaluator / PyTorch time",
                  title="Encoder on 30 s of audio: wconv's numpy evaluator (fp16) vs PyTorch (fp32)")
    for size in args.size:
        with tempfile.TemporaryDirectory() as folder:
            weights = convert(Path(folder), size)
            ours, torch_run = measure("evaluator", folder, size), measure("pytorch", folder, size)
        table.add_row(size, f"{weights:.2f}", f"{ours['load_s']:.1f}", f"{ours['predict_s']:.1f}", f"{ours['peak_gib']:.2f} ({ours['peak_gib'] - ours['baseline_gib']:.2f})",
                      f"{torch_run['predict_s']:.1f}", f"{torch_run['peak_gib']:.2f}", f"{ours['predict_s'] / torch_run['predict_s']:.2f}x")
    Console(width=170).print(table)


if __name__ == "__main__":
    main()

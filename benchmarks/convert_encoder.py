"""Encoder conversion time and peak memory: wconv's pipeline vs whisper.cpp's method, same run.

    python benchmarks/convert_encoder.py --size tiny base large-v3

Both start from the same random fp16 encoder weights with the real dimensions. wconv: its pipeline's
trace and convert stages (the shared ANE modules in fp16 -> torch.export -> ct.convert). whisper.cpp's method (models/convert-whisper-to-coreml.py):
openai-whisper's encoder with use_sdpa=False -> torch.jit.trace with its default trace checks
(the model runs three times) -> ct.convert (here with fp16 compute precision, as with its
--quantize flag; its default is fp32, which does not run on the ANE). Each method runs in its own
process so peak RSS is its own; peak RSS is read after every stage (it only grows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

METHODS = ("wconv", "whispercpp")


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def encoder_state_dict(size: str):
    import torch
    import whisper.model

    from wconv.tools.random_checkpoints import real_dims

    dims = real_dims(size)
    torch.manual_seed(0)
    encoder = whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
    state = {f"encoder.{k}": v.half() for k, v in encoder.state_dict().items()}
    del encoder
    return dims, state


def run_method(method: str, size: str, workdir: str) -> list[tuple[str, float, float]]:
    """Convert one encoder; returns (stage, seconds, peak RSS GiB so far) rows."""
    os.environ["TQDM_DISABLE"] = "1"
    import coremltools as ct
    import numpy as np
    import torch
    import whisper.model

    rows = []
    started = time.perf_counter()

    def mark(stage):
        nonlocal started
        rows.append((stage, time.perf_counter() - started, peak_rss_gib()))
        started = time.perf_counter()

    dims, state = encoder_state_dict(size)
    mark("load weights")
    if method == "wconv":  # the pipeline's own trace and convert stages
        from wconv.conversion import defaults
        from wconv.job import Job, LoadedModel
        from wconv.layouts.contracts import whispercpp_encoder

        model = LoadedModel(family="openai", name=size, dims=dims, state_dict=state, source=size, source_sha256="")
        artifact = whispercpp_encoder(model)
        traced = defaults.wconv_trace(model, artifact)
        del model, state
        mark("trace")
        mlmodel = defaults.wconv_convert(traced, artifact, Job(source=size, output=Path(workdir)))
    else:
        mel = torch.randn(1, dims.n_mels, 3000)
        whisper.model.MultiHeadAttention.use_sdpa = False
        module = whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        module.load_state_dict({k[len("encoder."):]: v.float() for k, v in state.items()})
        del state
        with torch.no_grad():
            traced = torch.jit.trace(module.eval(), mel)
        del module
        mark("trace")
        mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=[ct.TensorType(name="logmel_data", shape=tuple(mel.shape))],
                             outputs=[ct.TensorType(name="output", dtype=np.float32)], compute_precision=ct.precision.FLOAT16,
                             minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    del traced
    mark("convert")
    mlmodel.save(os.path.join(workdir, f"{method}.mlpackage"))
    mark("save")
    return rows


def measure(method: str, size: str) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as workdir:
        output = subprocess.run([sys.executable, __file__, "--child", method, size, workdir],
                                check=True, capture_output=True, text=True).stdout
    return [tuple(row) for row in json.loads(output.strip().splitlines()[-1])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["tiny", "base"], choices=["tiny", "base", "small", "medium", "large-v3"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(*args.child)))
        return

    table = Table("model", "stage", "wconv s", "wconv peak GiB", "whisper.cpp s", "whisper.cpp peak GiB", "time ratio", "memory ratio",
                  title="Encoder conversion: wconv vs whisper.cpp's method (same machine, same run)")
    for size in args.size:
        ours, theirs = measure("wconv", size), measure("whispercpp", size)
        for (stage, t_ours, m_ours), (_, t_theirs, m_theirs) in zip(ours, theirs):
            table.add_row(size, stage, f"{t_ours:.1f}", f"{m_ours:.2f}", f"{t_theirs:.1f}", f"{m_theirs:.2f}", "", "")
        total_ours, total_theirs = sum(r[1] for r in ours), sum(r[1] for r in theirs)
        peak_ours, peak_theirs = ours[-1][2], theirs[-1][2]
        table.add_row(size, "[b]total[/b]", f"{total_ours:.1f}", f"{peak_ours:.2f}", f"{total_theirs:.1f}", f"{peak_theirs:.2f}",
                      f"{total_theirs / total_ours:.2f}x faster", f"{peak_theirs / peak_ours:.2f}x less", end_section=True)
    Console(width=150).print(table)


if __name__ == "__main__":
    main()

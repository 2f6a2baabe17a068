"""Decoding speed of the two Core ML decoders in wconv's evaluator, and the bytes each moves per token.

    python benchmarks/decode.py [--size base] [--steps 8]

Random weights with the real dimensions. Each decoder is converted once with core's default hooks,
then ``--steps`` tokens (after one warm-up step) run through the evaluator with the host steps of
:mod:`wconv.runtime.decoding`. Bytes per token are everything that crosses the model boundary per
prediction, read from the artifacts' IO contracts: cache-io copies both caches in
(``2 * D * L * 448`` fp16) and the new slices out, stateful only token, position and logits; both
also take the encoder output every step. The evaluator runs on the CPU in numpy: its times rank the
variants' arithmetic, not their speed on the Neural Engine.

The second table measures the cross-attention choice (see :mod:`wconv.conversion.steps`): the share of a
step spent projecting the encoder output to cross keys and values, timed as the program a
once-per-audio "cross-kv" model would be, against the bytes that model's output would add to every
step if fed back as inputs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from wconv.conversion import defaults
from wconv.layouts.contracts import encoder_output_input
from wconv.layouts.coreml import CoreMLLayout
from wconv.conversion.steps import build_decoder
from wconv.runtime.decoding import decoder_steps
from wconv.runtime.evaluator import MLProgramEvaluator
from wconv.job import Artifact, ArtifactKind, Job, LoadedModel
from wconv.tools.random_checkpoints import random_state_dict, real_dims

ITEM_BYTES = {"float16": 2, "float32": 4, "int32": 4}


class CrossKeyValues(nn.Module):
    """Every decoder layer's cross-attention keys and values of the encoder output, concatenated on dim 1."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def forward(self, encoder_output_embeds):
        projections = [block.cross_attn.key(encoder_output_embeds) for block in self.blocks]
        projections += [block.cross_attn.value(encoder_output_embeds) for block in self.blocks]
        return torch.cat(projections, dim=1)


def spec_bytes(specs: list[dict]) -> int:
    return sum(int(np.prod(spec["shape"])) * ITEM_BYTES[spec["dtype"]] for spec in specs)


def save_converted(traced, artifact: Artifact, job: Job, directory: Path) -> Path:
    path = directory / artifact.filename
    defaults.wconv_convert(traced=traced, artifact=artifact, job=job).save(str(path))
    return path


def trace(module: nn.Module, artifact: Artifact):
    with torch.no_grad():
        return torch.export.export(module.eval(), defaults.example_inputs(artifact)).run_decompositions({})


def interleaved_medians(calls: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each ``call(round)`` over ``rounds`` rounds that run every call once, after a
    warm-up round: on a shared machine, changes in load then hit all calls alike."""
    times = {name: [] for name in calls}
    for index in range(rounds + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call(index)
            if index:
                times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def convert_decoder(model: LoadedModel, variant: str, directory: Path) -> tuple[Artifact, Path, str]:
    """One decoder converted with core's default hooks: its artifact, saved path and minimum target."""
    job = Job(source=model.source, decoder=variant)
    artifact = CoreMLLayout().plan(model, job)[-1]
    path = save_converted(defaults.wconv_trace(model=model, artifact=artifact), artifact, job, directory)
    return artifact, path, artifact.options.get("min_target", job.min_target)


def convert_cross_projection(model: LoadedModel, directory: Path) -> tuple[Artifact, Path]:
    """The cross key/value projection a decoder step recomputes, as a program of its own."""
    dims = model.dims
    artifact = Artifact(kind="cross-kv", filename="cross-kv.mlpackage", inputs=[encoder_output_input(model)],
                        outputs=[{"name": "cross_key_values", "dtype": "float16",
                                  "shape": [1, 2 * dims.n_text_state * dims.n_text_layer, 1, dims.n_audio_ctx]}])
    blocks = build_decoder("decoder-cache-io", dims, model.state_dict).decoder.blocks
    return artifact, save_converted(trace(CrossKeyValues(blocks), artifact), artifact, Job(source=model.source), directory)


def cache_bytes(artifact: Artifact) -> int:
    return spec_bytes([spec for spec in artifact.inputs + artifact.outputs if spec["name"].endswith(("_cache", "_cache_updates"))])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=["tiny", "base", "small"])
    parser.add_argument("--steps", type=int, default=8, help="timed decoding steps per variant")
    args = parser.parse_args()

    dims = real_dims(args.size)
    model = LoadedModel(family="openai", name=args.size, dims=dims, state_dict=random_state_dict(dims), source="random",
                        source_sha256="0" * 64, alignment_heads=[[dims.n_text_layer - 1, 0]])
    encoder_output = np.random.default_rng(0).standard_normal((1, dims.n_audio_state, 1, dims.n_audio_ctx)).astype(np.float16)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as workdir:
        with console.status("converting the decoders and the cross key/value projection"):
            decoders = {variant: convert_decoder(model, variant, Path(workdir)) for variant in ("cache-io", "stateful")}
            cross, cross_path = convert_cross_projection(model, Path(workdir))
        calls = {}
        for variant, (_, path, _) in decoders.items():
            step = decoder_steps(ArtifactKind.decoder(variant), MLProgramEvaluator.load(path), encoder_output, dims)
            calls[variant] = lambda position, step=step: step(50258 + position, position)
        projector = MLProgramEvaluator.load(cross_path)
        calls["projection"] = lambda _: projector.predict({"encoder_output_embeds": encoder_output})
        with console.status(f"timing {args.steps} interleaved rounds"):
            seconds = interleaved_medians(calls, args.steps)

    io_bytes = {variant: spec_bytes(artifact.inputs + artifact.outputs) for variant, (artifact, _, _) in decoders.items()}
    table = Table("decoder", "min target", "ms / token", "tokens / s", "cache bytes / token", "all IO bytes / token",
                  "speed vs cache-io", "IO bytes vs cache-io",
                  title=f"Whisper {args.size} decoders in wconv's evaluator (median of {args.steps} steps, random weights)")
    for variant, (artifact, _, target) in decoders.items():
        table.add_row(variant, target, f"{1000 * seconds[variant]:.0f}", f"{1 / seconds[variant]:.2f}",
                      f"{cache_bytes(artifact):,}", f"{io_bytes[variant]:,}", f"{seconds['cache-io'] / seconds[variant]:.2f}x",
                      f"{io_bytes[variant] / io_bytes['cache-io']:.3f}x")
    choice = Table("stateful step", "ms / token", "IO bytes / token",
                   title="Cross-attention keys/values: recomputed every step (chosen) or once per audio")
    choice.add_row("recomputes them (measured)", f"{1000 * seconds['stateful']:.0f}", f"{io_bytes['stateful']:,}")
    choice.add_row(f"takes them as inputs (step minus the {1000 * seconds['projection']:.0f} ms projection)",
                   f"{1000 * (seconds['stateful'] - seconds['projection']):.0f}",
                   f"{io_bytes['stateful'] + spec_bytes(cross.outputs):,}")
    Console(width=160).print(table, choice)


if __name__ == "__main__":
    main()

"""What a job produces: the list of Core ML artifacts, their file names and IO contracts."""

from __future__ import annotations

from .job import Artifact, Job, LoadedModel

N_FRAMES = 3000  # 30 s of audio at whisper's 10 ms hop


def encoder_filename(name: str, suffix: str = "") -> str:
    """whisper.cpp looks for ``ggml-<model>-encoder.mlmodelc`` beside ``ggml-<model>.bin``."""
    return f"ggml-{name}-encoder{suffix}.mlpackage"


def whispercpp_encoder(model: LoadedModel, frames: tuple[int, ...] = (N_FRAMES,)) -> Artifact:
    """The encoder whisper.cpp's Core ML build loads: float32 ``logmel_data`` in, float32 ``output`` out.

    whisper.cpp wraps a float32 buffer for the input and memcpy's the output as float32, so the IO
    stays float32 while everything inside computes in fp16. More than one frame count gives an
    encoder with ``ct.EnumeratedShapes`` (``-flex`` suffix); the largest count is the default.
    """
    dims = model.dims
    flexible = len(frames) > 1
    return Artifact(
        kind="encoder",
        filename=encoder_filename(model.name, "-flex" if flexible else ""),
        inputs=[{"name": "logmel_data", "shape": [1, dims.n_mels, max(frames)], "dtype": "float32",
                 "enumerated_frames": sorted(frames) if flexible else None}],
        outputs=[{"name": "output", "shape": [1, max(frames) // 2, dims.n_audio_state], "dtype": "float32"}],
    )


def plan_artifacts(model: LoadedModel, job: Job) -> list[Artifact]:
    """Every Core ML artifact this job writes, in conversion order."""
    plan = [whispercpp_encoder(model)]
    if job.audio_lengths:
        plan.append(whispercpp_encoder(model, tuple(job.audio_lengths)))
    return plan

"""distil-whisper: the parent's converted encoder is reused (no trace, no convert) only when every
encoder tensor is the same; a mismatch is refused before anything is written."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

import wconv
from wconv import pipeline
from wconv.cli import cli
from wconv.manager import get_plugin_manager
from wconv.plugins.hf_whisper.export import save_hf_whisper
from wconv.tools.random_checkpoints import random_state_dict, real_dims


def distil_of(parent_state: dict, dims, decoder_layers: int = 2, seed: int = 9):
    """A distil-like model: the parent's encoder, a fresh decoder with fewer layers."""
    distil_dims = dataclasses.replace(dims, n_text_layer=decoder_layers)
    fresh = random_state_dict(distil_dims, seed=seed)
    state = {k: v for k, v in fresh.items() if not k.startswith("encoder.")}
    state.update({k: v.clone() for k, v in parent_state.items() if k.startswith("encoder.")})
    return distil_dims, state


@pytest.fixture(scope="module")
def pair(module_tmp):
    """A tiny HF parent, converted once, and a distil sharing its encoder with 2 decoder layers."""
    root = module_tmp("distil")
    dims = real_dims("tiny")
    parent_state = random_state_dict(dims, seed=4)
    parent_dir = save_hf_whisper(root / "whisper-parent", dims, parent_state)
    distil_dims, distil_state = distil_of(parent_state, dims)
    distil_dir = save_hf_whisper(root / "distil-tiny", distil_dims, distil_state)
    output = root / "models"
    pipeline.run(wconv.Job(source=str(parent_dir), family="hf", output=output, verify=False))
    return root, parent_dir, distil_dir, output, dims, parent_state


class StageRecorder:
    """Records every trace and convert call, and lets the defaults do the work."""

    def __init__(self):
        self.calls = []

    @wconv.hookimpl(tryfirst=True)
    def wconv_trace(self, artifact):
        self.calls.append(("trace", artifact.filename))

    @wconv.hookimpl(tryfirst=True)
    def wconv_convert(self, artifact):
        self.calls.append(("convert", artifact.filename))


def run_with_recorder(job):
    recorder = StageRecorder()
    result = pipeline.run(job, get_plugin_manager(entrypoints=False, extra=[recorder]))
    return result, recorder.calls


def weight_bytes(package):
    return (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").read_bytes()


def test_distil_reuses_the_parents_encoder_without_tracing_or_converting(pair):
    root, parent_dir, distil_dir, output, _, _ = pair
    job = wconv.Job(source=str(distil_dir), family="distil", output=output, verify=False, parent=str(parent_dir))
    result, calls = run_with_recorder(job)
    assert calls == []
    package = output / "ggml-distil-tiny-encoder.mlpackage"
    assert weight_bytes(package) == weight_bytes(output / "ggml-whisper-parent-encoder.mlpackage")
    manifest = json.loads((output / "distil-tiny.manifest.json").read_text())
    record = manifest["reused"][package.name]
    assert record["parent"] == "whisper-parent" and len(record["parent_sha256"]) == 64
    assert record["encoder_tensors_compared"] == len([k for k in result.model.state_dict if k.startswith("encoder.")])
    assert manifest["artifacts"][0]["reused_from"].endswith("ggml-whisper-parent-encoder.mlpackage")
    # the distil's own decoder goes into its ggml file
    from wconv.layouts.ggml import read_ggml_header

    assert read_ggml_header(output / "ggml-distil-tiny.bin")["hparams"]["n_text_layer"] == 2


def test_parent_not_converted_yet_is_converted_once_into_the_cache(pair, tmp_path, monkeypatch):
    root, parent_dir, distil_dir, _, _, _ = pair
    monkeypatch.setenv("WCONV_CACHE_DIR", str(tmp_path / "cache"))
    job = wconv.Job(source=str(distil_dir), family="distil", output=tmp_path / "out", verify=False, parent=str(parent_dir))
    _, calls = run_with_recorder(job)
    assert calls == []  # the parent's conversion runs on its own plugin manager; this one saw none
    (cached,) = (tmp_path / "cache" / "encoders").iterdir()
    assert weight_bytes(tmp_path / "out" / "ggml-distil-tiny-encoder.mlpackage") == weight_bytes(cached / "ggml-whisper-parent-encoder.mlpackage")
    job = job.replace(output=tmp_path / "again")
    before = sorted(p.stat().st_mtime_ns for p in cached.rglob("*"))
    run_with_recorder(job)
    assert sorted(p.stat().st_mtime_ns for p in cached.rglob("*")) == before  # reused, not converted again


def test_a_differing_encoder_tensor_is_refused_and_converts_with_the_flag(pair, tmp_path):
    root, parent_dir, _, _, dims, parent_state = pair
    distil_dims, distil_state = distil_of(parent_state, dims)
    distil_state["encoder.blocks.1.mlp.0.bias"] = distil_state["encoder.blocks.1.mlp.0.bias"] + 0.5
    changed = save_hf_whisper(tmp_path / "distil-changed", distil_dims, distil_state)
    result = CliRunner().invoke(cli, ["run", "--family", "distil", str(changed), "--parent", str(parent_dir), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "encoder.blocks.1.mlp.0.bias" in result.output and "--convert-own-encoder" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "out").exists()

    job = wconv.Job(source=str(changed), family="distil", output=tmp_path / "own", verify=False,
                    parent=str(parent_dir), convert_own_encoder=True)
    result, calls = run_with_recorder(job)
    assert ("trace", "ggml-distil-changed-encoder.mlpackage") in calls
    assert "reused" not in result.manifest


def test_mismatched_n_mels_is_an_error_before_anything_is_written(pair, tmp_path):
    root, parent_dir, _, _, _, _ = pair
    dims = dataclasses.replace(real_dims("tiny"), n_mels=128)
    other = save_hf_whisper(tmp_path / "distil-128", dims, random_state_dict(dims, seed=2))
    result = CliRunner().invoke(cli, ["run", "--family", "distil", str(other), "--parent", str(parent_dir), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "n_mels=128" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["large-v2", "distil-large-v2", "distil-whisper/distil-large-v2"])
def test_known_names_resolve_to_the_hub_checkpoint_and_parent(source):
    from wconv.plugins.distil_whisper.reuse import resolve_distil

    distil = resolve_distil(wconv.Job(source=source, family="distil"))
    assert (distil.name, distil.checkpoint, distil.parent) == ("distil-large-v2", "distil-whisper/distil-large-v2", "large-v2")


def test_a_local_distil_without_parent_asks_for_one(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--family", "distil", str(tmp_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--parent" in result.output


def test_distil_large_v35_with_a_different_encoder_converts_its_own(pair, tmp_path):
    root, parent_dir, _, _, dims, parent_state = pair
    distil_dims, distil_state = distil_of(parent_state, dims)
    distil_state["encoder.ln_post.bias"] = distil_state["encoder.ln_post.bias"] + 0.25
    v35 = save_hf_whisper(tmp_path / "distil-large-v3.5", distil_dims, distil_state)
    job = wconv.Job(source=str(v35), family="distil", output=tmp_path / "out", verify=False, parent=str(parent_dir))
    result, calls = run_with_recorder(job)
    assert ("convert", "ggml-distil-large-v3.5-encoder.mlpackage") in calls
    assert "reused" not in result.manifest
    assert "encoder.ln_post.bias" in result.manifest["encoder_differs"]


def test_whisperkit_layout_without_a_converted_parent_converts_its_own_encoder(pair, tmp_path, monkeypatch):
    """The parent's whisper.cpp encoder (in the pair's output) has other IO: it is not linked, nor is the parent converted."""
    root, parent_dir, distil_dir, output, _, _ = pair
    monkeypatch.setenv("WCONV_CACHE_DIR", str(tmp_path / "cache"))
    job = wconv.Job(source=str(distil_dir), family="distil", output=output, verify=False,
                    parent=str(parent_dir), layout="whisperkit")
    result, calls = run_with_recorder(job)
    assert ("convert", "AudioEncoder.mlpackage") in calls and "reused" not in result.manifest
    assert not (tmp_path / "cache").exists()

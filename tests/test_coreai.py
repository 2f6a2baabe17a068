"""--layout coreai: Core AI assets converted from the shared ANE modules and run on coreai-core's bundled runtime.

The runtime is slow on CPU (measured under load here: base encoder 43 s per call, a cache-io step 3.6 s), so each
model is converted once per module and the base weights transcribe one clip in fp32, the smallest proof of the chain
(CI's 30 minutes).
"""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from conftest import text_tokens

import wconv
from wconv.cli import cli

needs_coreai = pytest.mark.skipif(importlib.util.find_spec("coreai_torch") is None,
                                  reason='the coreai extra is not installed: pip install -e ".[coreai]"')


@pytest.mark.parametrize("args, message", [
    (["--compress", "int8"], "--compress int8 is not available for --layout coreai"),
    (["--ggml-type", "q5_0"], "--ggml-type does not apply to --layout coreai"),
    (["--audio-lengths", "1500"], "--audio-lengths must include 3000"),
])
def test_options_it_cannot_honour_are_refused_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["run", "tiny.pt", "--layout", "coreai", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_float32_is_refused_by_the_core_ml_layouts(tmp_path):
    result = CliRunner().invoke(cli, ["run", "tiny.pt", "--precision", "float32", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "--precision float32 does not apply to --layout whispercpp: it writes float16" in result.output


def test_a_missing_extra_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "coreai_torch", None)  # as if not installed
    result = CliRunner().invoke(cli, ["run", "tiny.pt", "--layout", "coreai", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output == 'Error: --layout coreai needs Apple\'s Core AI packages (coreai_torch is missing): pip install "wconv[coreai]"\n'


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    """Random tiny weights converted the default way: fp16 encoder with two lengths and a stateful decoder, verified."""
    from wconv.tools.random_checkpoints import write_random_checkpoint

    folder = tmp_path_factory.mktemp("coreai-tiny")
    write_random_checkpoint(folder / "tiny.pt", "tiny", 0)
    return wconv.convert(str(folder / "tiny.pt"), "openai", folder / "out", layout="coreai", decoder="stateful",
                         audio_lengths=(1500, 3000))


@needs_coreai
def test_fp16_assets_have_the_ane_contracts_and_functions_per_length(tiny_fp16):
    from wconv.runtime.coreai import describe_aimodel

    folder = tiny_fp16.manifest_path.parent
    assert sorted(path.name for path in tiny_fp16.paths) == ["tiny-decoder-stateful.aimodel", "tiny-encoder.aimodel"]
    encoder = describe_aimodel(folder / "tiny-encoder.aimodel")
    assert encoder["functions"] == ["main_frames_1500", "main_frames_3000"]
    assert encoder["inputs"] == [{"name": "melspectrogram_features", "shape": [1, 80, 1, 3000], "dtype": "float16"}]
    assert encoder["outputs"] == [{"name": "encoder_output_embeds", "shape": [1, 384, 1, 1500], "dtype": "float16"}]
    decoder = describe_aimodel(folder / "tiny-decoder-stateful.aimodel")
    assert [s["name"] for s in decoder["inputs"]] == ["input_ids", "cache_length", "encoder_output_embeds"]
    assert {s["name"]: (s["shape"], s["dtype"]) for s in decoder["states"]}["value_cache_3"] == ([1, 384, 1, 448], "float16")


@needs_coreai
def test_fp16_assets_are_verified_through_their_fp32_twins_above_60_db(tiny_fp16):
    manifest = json.loads(tiny_fp16.manifest_path.read_text())
    checks = {check["artifact"]: check for check in manifest["verify"]}
    assert set(checks) == {"tiny-encoder.aimodel", "tiny-decoder-stateful.aimodel"}
    for check in checks.values():
        assert check["passed"] and check["metrics"]["psnr"] >= 60
        assert check["method"] == "coreai-runtime (fp32 twin)"
        assert "fp16 execution skipped: coreai-core's CPU runtime runs fp16 ~33x slower" in check["message"]
    assert "xcrun coreai-build compile" in tiny_fp16.notes[0] and "--preferred-compute neural-engine" in tiny_fp16.notes[0]


@pytest.fixture(scope="module")
def base_fp32(sample_dir, tmp_path_factory):
    """The real base weights as fp32 assets with the cache-io decoder (verification is the tiny model's test: time)."""
    return wconv.convert(str(sample_dir), "ct2", tmp_path_factory.mktemp("coreai-base"), layout="coreai", decoder="cache-io",
                         precision="float32", verify=False)


@needs_coreai
def test_base_transcribes_a_clip_exactly_as_openai_whisper_fp32(base_fp32, speech_clips, openai_base_model):
    import torch

    from wconv.runtime.audio import host_log_mel, read_wav
    from wconv.runtime.reference import reference_tokens
    from wconv.tools.transcribe import transcribe

    with torch.no_grad():
        features = openai_base_model.encoder(torch.from_numpy(host_log_mel(read_wav(speech_clips[0]), 80))).numpy()
    result = transcribe(base_fp32.manifest_path, speech_clips[0], "en")
    assert text_tokens(result["tokens"]) == reference_tokens(openai_base_model, features, "en")
    assert result["encoder"] == "coreai-runtime" and result["decoder"] == "cache-io coreai-runtime"

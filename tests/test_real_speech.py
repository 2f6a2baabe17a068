"""Real weights, real speech: the CTranslate2 family through `wconv run`, `wconv transcribe`, and
the converted base encoder (fp16, run by the reference evaluator) against PyTorch fp32."""

import json
import shutil

import pytest
import torch
import whisper
from click.testing import CliRunner

from wconv.cli import cli
from wconv.tools.transcribe import encode
from wconv.manifest import read_manifest
from wconv.runtime.audio import log_mel_of, read_wav
from wconv.verify.metrics import compare


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def converted(base_whispercpp):
    """The real base weights converted once by `wconv run --family ct2` (verify included)."""
    return base_whispercpp


@pytest.fixture(scope="module")
def encoder_outputs(converted, speech_clips):
    """The converted encoder's output for each clip, run by the evaluator (Core ML on macOS)."""
    manifest = read_manifest(converted[0])
    return {clip.name: encode(manifest, clip)[0] for clip in speech_clips}


def test_run_writes_whispercpp_pair_and_a_passing_manifest(converted):
    output, manifest = converted
    assert sorted(p.name for p in output.iterdir()) == ["base.manifest.json", "ggml-base-encoder.mlpackage", "ggml-base.bin"]
    assert manifest["family"] == "ct2" and manifest["dims"]["n_audio_state"] == 512
    (check,) = manifest["verify"]
    assert check["passed"] and check["metrics"]["psnr"] >= 50


def test_encoder_psnr_on_real_speech_is_at_least_50_db(encoder_outputs, openai_base_model, speech_clips):
    for clip in speech_clips:
        mel = torch.from_numpy(log_mel_of(clip, 80, 3000))
        with torch.no_grad():
            reference = openai_base_model.encoder(mel).numpy()
        metrics = compare(reference, encoder_outputs[clip.name])
        assert metrics["psnr"] >= 50, (clip.name, metrics)
        assert metrics["cosine_similarity"] >= 0.9999, (clip.name, metrics)


def greedy_tokens(model, features_or_mel):
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    return whisper.decode(model, features_or_mel, options).tokens


def test_converted_encoder_with_pytorch_decoder_gives_fp32_tokens(encoder_outputs, openai_base_model, speech_clips):
    for clip in speech_clips:
        mel = torch.from_numpy(log_mel_of(clip, 80, 3000))[0]
        expected = greedy_tokens(openai_base_model, mel)
        actual = greedy_tokens(openai_base_model, torch.from_numpy(encoder_outputs[clip.name][0]))
        assert actual == expected, clip.name


def test_transcribe_command_prints_text_and_tokens(converted, speech_clips, openai_base_model):
    output, _ = converted
    clip = speech_clips[2]
    result = invoke("transcribe", output, clip, "--json", "--language", "en")
    assert result.exit_code == 0, result.output
    transcript = json.loads(result.stdout)
    expected = whisper.transcribe(openai_base_model, read_wav(clip), language="en", temperature=0, fp16=False)
    assert transcript["tokens"] == [token for segment in expected["segments"] for token in segment["tokens"]]
    assert transcript["text"] == "It is a sunny day today. We will walk to the park and have lunch with our friends."


def copy_sample(sample_dir, tmp_path):
    broken = tmp_path / "broken-ct2"
    shutil.copytree(sample_dir, broken)
    return broken


def truncate(directory):
    model = directory / "model.bin"
    with open(model, "r+b") as f:
        f.truncate(model.stat().st_size // 3)


def rename_spec(directory):
    model = directory / "model.bin"
    data = bytearray(model.read_bytes())
    start = data.index(b"WhisperSpec")
    data[start:start + 11] = b"BertModSpec"
    model.write_bytes(bytes(data))


def drop_config(directory):
    (directory / "config.json").unlink()


@pytest.mark.parametrize("damage, message", [
    (truncate, "model.bin"), (rename_spec, "not a Whisper model"), (drop_config, "config.json not found"),
])
def test_broken_ct2_directories_fail_with_one_line_and_write_nothing(sample_dir, tmp_path, damage, message):
    broken = copy_sample(sample_dir, tmp_path)
    damage(broken)
    result = invoke("run", "--family", "ct2", broken, "--output", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()

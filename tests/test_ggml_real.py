"""The whisper.cpp hybrid with real weights: `wconv run` writes ggml files that the real whisper.cpp
(pywhispercpp) loads and transcribes: f16 with openai-whisper fp32's tokens, q8_0/q5_0 within 0.05 WER."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import whisper
from click.testing import CliRunner

from wconv.cli import cli
from wconv.layouts.ggml import read_ggml_header
from wconv.runtime.audio import log_mel_of

RUNNER = Path(__file__).with_name("whispercpp_runner.py")
SENTENCES = {clip["file"]: clip["sentence"] for clip in json.loads((Path(__file__).parent / "data" / "clips.json").read_text())["clips"]}


@pytest.fixture(scope="module")
def ggml_files(sample_dir, module_tmp):
    """f16, q8_0 and q5_0 ggml files of the real base weights, each written by `wconv run` (verification has its own tests)."""
    output = module_tmp("ggml")
    files = {}
    for ggml_type in ("f16", "q8_0", "q5_0"):
        result = CliRunner().invoke(cli, ["run", "--family", "ct2", str(sample_dir), "--output", str(output / ggml_type),
                                          "--ggml-type", ggml_type, "--no-verify"])
        assert result.exit_code == 0, result.output
        (files[ggml_type],) = (output / ggml_type).glob("ggml-base*.bin")
    return files


def whisper_cpp(model: Path, clip: Path) -> dict:
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    done = subprocess.run([sys.executable, RUNNER, model, clip], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def word_error_rate(reference: str, hypothesis: str) -> float:
    normalize = lambda text: re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()  # noqa: E731
    ref, hyp = normalize(reference), normalize(hypothesis)
    distance = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, distance[0] = distance[0], i
        for j, other in enumerate(hyp, 1):
            previous, distance[j] = distance[j], min(distance[j] + 1, distance[j - 1] + 1, previous + (word != other))
    return distance[-1] / len(ref)


def test_file_names_and_header_follow_the_model(ggml_files):
    assert {kind: path.name for kind, path in ggml_files.items()} == {
        "f16": "ggml-base.bin", "q8_0": "ggml-base-q8_0.bin", "q5_0": "ggml-base-q5_0.bin"}
    header = read_ggml_header(ggml_files["q5_0"])
    assert header["ftype"] == 2008 and header["hparams"]["n_audio_state"] == 512 and len(header["vocab"]) == 50257


def test_f16_file_gives_openai_whisper_fp32_tokens_in_real_whisper_cpp(ggml_files, openai_base_model, speech_clips):
    for clip in speech_clips:
        mel = torch.from_numpy(log_mel_of(clip, 80, 3000))[0]
        options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
        expected = whisper.decode(openai_base_model, mel, options).tokens
        assert whisper_cpp(ggml_files["f16"], clip)["tokens"] == expected, clip.name


def test_quantized_files_stay_within_005_wer_of_f16(ggml_files, speech_clips):
    def mean_wer(kind):
        return sum(word_error_rate(SENTENCES[c.name], whisper_cpp(ggml_files[kind], c)["text"]) for c in speech_clips) / len(speech_clips)

    baseline = mean_wer("f16")
    for kind in ("q8_0", "q5_0"):
        assert mean_wer(kind) <= baseline + 0.05, kind

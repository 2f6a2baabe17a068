"""whisper.cpp's ggml files as a source (the `ggml` family): the real base weights written as f16, q8_0 and q5_0
ggml files convert back to encoders that match openai-whisper on the dequantized weights and transcribe like
fp32; a distil-shaped ggml pair takes the rename path, proven tensor by tensor; bad files fail in one line."""

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import text_tokens
from test_compress import first_difference_margin
from test_distil import run_with_recorder, weight_bytes

import wconv
from wconv import pipeline
from wconv.cli import cli
from wconv.layouts.ggml import ggml_file_name, read_ggml, vocab_from_tiktoken, write_ggml
from wconv.runtime.audio import log_mel_of
from wconv.runtime.evaluator import MLProgramEvaluator
from wconv.runtime.reference import reference_tokens, whisper_model
from wconv.tools.random_checkpoints import random_state_dict, real_dims
from wconv.tools.transcribe import source_model
from wconv.verify.metrics import compare, edit_distance

MAX_TOKEN_ERROR_RATE = {"f16": 0.0, "q8_0": 0.05, "q5_0": 0.1}
SMALL_MARGIN = 1.0  # nats: where a token differs from fp32's, fp32 must have been near a tie


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def base_ggml_files(ct2_base, tmp_path_factory):
    """The real base weights as whisper.cpp files of each type, written once by wconv's ggml writer."""
    folder = tmp_path_factory.mktemp("ggml-base")
    vocab = vocab_from_tiktoken(multilingual=True)
    return {kind: write_ggml(folder / ggml_file_name("base", kind), ct2_base.dims, ct2_base.state_dict, vocab, kind)
            for kind in MAX_TOKEN_ERROR_RATE}


@pytest.fixture(scope="module", params=list(MAX_TOKEN_ERROR_RATE))
def converted(request, base_ggml_files, speech_clips, tmp_path_factory):
    """`wconv run` of one ggml file (no --family: found by its magic), and the converted encoder's output per clip."""
    kind = request.param
    output = tmp_path_factory.mktemp(f"from-{kind}")
    result = wconv.convert(base_ggml_files[kind], output=output, ggml_type=kind, verify=False)
    encoder = MLProgramEvaluator.load(output / "ggml-base-encoder.mlpackage")
    encoded = {clip.name: encoder.predict({"logmel_data": log_mel_of(clip, 80, 3000)})["output"] for clip in speech_clips}
    return kind, result, encoded


def test_the_file_is_recognised_by_its_magic_and_written_back_byte_for_byte(converted, base_ggml_files):
    kind, result, _ = converted
    assert (result.model.family, result.model.name, result.manifest["source_ggml_type"]) == ("ggml", "base", kind)
    assert len(result.model.state_dict) == len(read_ggml(base_ggml_files[kind]).tensors)
    written = result.manifest_path.parent / base_ggml_files[kind].name
    assert written.read_bytes() == base_ggml_files[kind].read_bytes()  # dequantized, re-quantized: the same blocks


def test_encoder_matches_openai_whisper_on_the_dequantized_weights(converted, speech_clips, fp32_transcripts):
    kind, result, encoded = converted
    for clip in speech_clips:
        reference = result.model.reference_encoder(torch.from_numpy(log_mel_of(clip, 80, 3000))).numpy()
        psnr = compare(reference, encoded[clip.name])["psnr"]
        original = compare(fp32_transcripts[clip.name][0].numpy(), encoded[clip.name])["psnr"]
        print(f"{kind} {clip.name}: encoder PSNR {psnr:.1f} dB (vs the original weights' fp32 encoder: {original:.1f} dB)")
        assert psnr >= 70


def test_transcripts_from_the_output_alone_match_fp32(converted, fp32_transcripts, openai_base_model):
    """The host decoder comes from the ggml file beside the encoder: the manifest's checkpoint is gone."""
    kind, result, encoded = converted
    manifest = {**result.manifest, "_path": str(result.manifest_path), "source": "/gone/faster-whisper-base", "family": "ct2"}
    source = source_model(manifest)
    assert (source.family, source.source) == ("ggml", str(result.manifest_path.parent / result.manifest["artifacts"][1]["file"]))
    decoder = whisper_model(source.dims, source.state_dict)
    errors = total = 0
    margins = []
    for clip, features in encoded.items():
        reference_features, expected = fp32_transcripts[clip]
        tokens = reference_tokens(decoder, features, "en")
        errors += edit_distance(tokens, expected)
        total += len(expected)
        if (margin := first_difference_margin(openai_base_model, reference_features, expected, tokens)) is not None:
            margins.append((clip, round(margin, 3)))
    print(f"{kind}: token error rate {errors / total:.3f}; fp32 log-prob margins where tokens first differ: {margins}")
    assert errors / total <= MAX_TOKEN_ERROR_RATE[kind]
    if kind != "q5_0":  # 5 bits move the decoder further (its first differing tokens measured 1.4-1.6 nats behind)
        assert all(abs(margin) < SMALL_MARGIN for _, margin in margins), margins


def test_transcribe_command_needs_no_original_checkpoint(converted, speech_clips, fp32_transcripts, tmp_path):
    kind, result, _ = converted
    if kind != "f16":
        pytest.skip("one type is enough for the command")
    moved = tmp_path / "models"
    shutil.copytree(result.manifest_path.parent, moved)
    manifest = json.loads(result.manifest_path.read_text())
    (moved / result.manifest_path.name).write_text(json.dumps({**manifest, "source": str(tmp_path / "gone.bin")}))
    done = invoke("transcribe", moved, speech_clips[0], "--json", "--language", "en")
    assert done.exit_code == 0, done.output
    assert text_tokens(json.loads(done.output)["tokens"]) == fp32_transcripts[speech_clips[0].name][1]


def test_model_name_comes_from_the_file_name():
    from wconv.plugins.ggml_whisper import model_name

    assert [model_name(Path(name)) for name in ("ggml-small.en-q5_0.bin", "ggml-large-v3-turbo.bin", "ggml-base-f16.bin", "My Tune.bin")] == [
        "small.en", "large-v3-turbo", "base", "my-tune"]


# A distil-shaped pair of tiny random models: the parent's encoder, a decoder of 2 layers.

def distil_state(parent_state: dict, dims):
    distil_dims = dataclasses.replace(dims, n_text_layer=2)
    state = {k: v for k, v in random_state_dict(distil_dims, seed=7).items() if not k.startswith("encoder.")}
    state.update({k: v for k, v in parent_state.items() if k.startswith("encoder.")})
    return distil_dims, state


def requantized(path, ggml_type: str):
    """An f16 ggml file quantized the way whisper.cpp's quantize tool does it: from the values the file stores."""
    ggml = read_ggml(path)
    target = path.with_name(path.name.replace(".bin", f"-{ggml_type}.bin"))
    return write_ggml(target, ggml.dims, {name: ggml.array(name) for name in ggml.tensors}, ggml.vocab, ggml_type)


@pytest.fixture(scope="module")
def ggml_pair(tmp_path_factory):
    """A tiny parent ggml file converted once into ``models``, and distil files (f16, q5_0) sharing its encoder."""
    root = tmp_path_factory.mktemp("ggml-distil")
    dims = real_dims("tiny")
    parent_state = random_state_dict(dims, seed=3)
    vocab = vocab_from_tiktoken(multilingual=True)
    parent = write_ggml(root / "ggml-tiny.bin", dims, parent_state, vocab)
    distil_dims, state = distil_state(parent_state, dims)
    distil = write_ggml(root / "ggml-distil-tiny.bin", distil_dims, state, vocab)
    distils = {"f16": distil, "q5_0": requantized(distil, "q5_0")}
    output = root / "models"
    pipeline.run(wconv.Job(source=str(parent), output=output, layout="coreml", verify=False))
    return root, parent, distils, output


@pytest.mark.parametrize("kind", ["f16", "q5_0"])
def test_distil_ggml_links_the_parents_encoder_with_no_trace_or_convert(ggml_pair, kind, tmp_path, monkeypatch):
    root, parent, distils, output = ggml_pair
    monkeypatch.setenv("WCONV_CACHE_DIR", str(tmp_path / "cache"))
    job = wconv.Job(source=str(distils[kind]), family="distil", output=output, parent=str(parent), ggml_type=kind, verify=False, force=True)
    result, calls = run_with_recorder(job)
    assert calls == [] and not (tmp_path / "cache").exists()
    linked = output / "ggml-distil-tiny-encoder.mlpackage"
    assert weight_bytes(linked) == weight_bytes(output / "ggml-tiny-encoder.mlpackage")
    record = result.manifest["reused"][linked.name]
    assert record["parent"] == "tiny" and record["encoder_tensors_compared"] == 4 * 15 + 7
    assert read_ggml(output / distils[kind].name).dims.n_text_layer == 2  # the distil's own decoder


def test_a_distil_whose_encoder_differs_is_refused_naming_the_tensor(ggml_pair, tmp_path):
    root, parent, distils, _ = ggml_pair
    ggml = read_ggml(distils["f16"])
    state = {name: torch.from_numpy(np.array(ggml.array(name))) for name in ggml.tensors}
    state["encoder.blocks.2.mlp.0.weight"][0, 0] += 0.5
    changed = write_ggml(tmp_path / "ggml-distil-changed.bin", ggml.dims, state, ggml.vocab)
    done = invoke("run", "--family", "distil", changed, "--parent", parent, "-o", tmp_path / "out")
    assert done.exit_code == 2 and done.output.count("\n") == 1
    assert "encoder.blocks.2.mlp.0.weight" in done.output and "--convert-own-encoder" in done.output
    assert not (tmp_path / "out").exists()


def test_a_converted_parent_encoder_needs_a_proof_or_trust(ggml_pair, tmp_path):
    root, parent, distils, output = ggml_pair
    package = output / "ggml-tiny-encoder.mlpackage"
    lone = tmp_path / "downloaded" / package.name  # no manifest beside it
    shutil.copytree(package, lone)
    distil = distils["f16"]

    done = invoke("run", "--family", "distil", distil, "--parent", lone, "-o", tmp_path / "refused")
    assert done.exit_code == 2 and done.output.count("\n") == 1 and "--trust-parent" in done.output
    assert not (tmp_path / "refused").exists()
    done = invoke("run", "--family", "distil", distil, "--parent", parent, "--trust-parent", "-o", tmp_path / "refused")
    assert done.exit_code == 2 and "go with --parent <the parent's converted encoder" in done.output
    assert not (tmp_path / "refused").exists()

    for flags, proof in [([], "manifest"), (["--parent-ggml", parent], "parent-ggml"), (["--trust-parent"], "trusted")]:
        given = package if proof == "manifest" else lone
        out = tmp_path / proof
        done = invoke("run", "--family", "distil", distil, "--parent", given, *flags, "-o", out, "--no-verify")
        assert done.exit_code == 0, done.output
        manifest = json.loads((out / "distil-tiny.manifest.json").read_text())
        assert manifest["parent_proof"] == proof and manifest["parent_package"] == str(given.resolve())
        assert weight_bytes(out / "ggml-distil-tiny-encoder.mlpackage") == weight_bytes(package)
        assert manifest["options"].get("trust_parent", False) == (proof == "trusted")
        assert manifest["reused"]["ggml-distil-tiny-encoder.mlpackage"].get("trusted", False) == (proof == "trusted")


def test_a_quantized_parent_cannot_prove_an_f16_distil(ggml_pair, tmp_path):
    root, parent, distils, _ = ggml_pair
    quantized = requantized(Path(shutil.copy(parent, tmp_path)), "q5_0")
    done = invoke("run", "--family", "distil", distils["f16"], "--parent", quantized, "-o", tmp_path / "out")
    assert done.exit_code == 2 and "quantized parent" in done.output and not (tmp_path / "out").exists()


def corrupt(data: bytes, how: str) -> bytes:
    """A tiny ggml file broken one way."""
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "wrong magic":
        return b"GGUF" + data[4:]
    if how == "unknown ftype":
        return data[:44] + struct.pack("<i", 99) + data[48:]
    n_mel, n_fft = struct.unpack_from("<2i", data, 48)
    vocab_at = 56 + 4 * n_mel * n_fft
    if how == "huge vocabulary":  # 2**31 - 1 tokens
        return data[:vocab_at] + struct.pack("<i", 2**31 - 1) + data[vocab_at + 4:]
    if how == "huge vocabulary entry":  # the first token declares 2 GiB of bytes
        return data[:vocab_at + 4] + struct.pack("<i", 2**31 - 1) + data[vocab_at + 8:]
    name = b"encoder.blocks.0.attn.query.weight"  # (384, 384) stored as (768, 192): same size, wrong shape
    header = data.index(name) - 8 - 12
    return data[:header + 12] + struct.pack("<2i", 192, 768) + data[header + 20:]


@pytest.mark.parametrize("how, message", [
    ("truncated", "truncated"), ("wrong magic", "bad magic"), ("unknown ftype", "ftype 99"),
    ("huge vocabulary", "a vocabulary of 2147483647 tokens"), ("huge vocabulary entry", "truncated or corrupt"), ("wrong shape", "encoder.blocks.0.attn.query.weight has shape [768, 192]"),
])
def test_bad_files_fail_in_one_line_and_write_nothing(ggml_pair, tmp_path, how, message):
    root, parent, _, _ = ggml_pair
    bad = tmp_path / "ggml-bad.bin"
    bad.write_bytes(corrupt(parent.read_bytes(), how))
    done = invoke("run", "--family", "whisper.cpp", bad, "-o", tmp_path / "out")
    assert done.exit_code == 2 and done.output.count("\n") == 1, done.output
    assert str(bad) in done.output and message in done.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(wconv.InputError):
        read_ggml(bad)


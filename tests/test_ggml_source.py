"""whisper.cpp's ggml files as a source (the `ggml` family): the real base weights written as f16, q8_0 and q5_0
ggml files convert back to encoders that match openai-whisper on the dequantized weights and transcribe like
fp32; a small one converts to the stateful decoder and WhisperKit's folder, verified; a distil-shaped ggml pair takes
the rename path, proven tensor by tensor, also from the parent's compiled .mlmodelc; bad files fail in one line."""

import dataclasses
import json
import os
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
from wconv.job import JOB_DEFAULTS
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
def base_ggml_files(ct2_base, module_tmp):
    """The real base weights as whisper.cpp files of each type, written once by wconv's ggml writer."""
    folder = module_tmp("ggml-base")
    vocab = vocab_from_tiktoken(multilingual=True)
    return {kind: write_ggml(folder / ggml_file_name("base", kind), ct2_base.dims, ct2_base.state_dict, vocab, kind)
            for kind in MAX_TOKEN_ERROR_RATE}


@pytest.fixture(scope="module", params=list(MAX_TOKEN_ERROR_RATE))
def converted(request, base_ggml_files, speech_clips, module_tmp):
    """`wconv run` of one ggml file (no --family: found by its magic), and the converted encoder's output per clip."""
    kind = request.param
    output = module_tmp(f"from-{kind}")
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


# A distil-shaped pair of small random models (tiny's widths, 2 layers; CI time): the parent's encoder, a decoder of 1 layer.

ENCODER_TENSORS = 2 * 15 + 7  # 15 per block, the convolutions, position embedding and final norm


def distil_state(parent_state: dict, dims):
    distil_dims = dataclasses.replace(dims, n_text_layer=1)
    state = {k: v for k, v in random_state_dict(distil_dims, seed=7).items() if not k.startswith("encoder.")}
    state.update({k: v for k, v in parent_state.items() if k.startswith("encoder.")})
    return distil_dims, state


def requantized(path, ggml_type: str):
    """An f16 ggml file quantized the way whisper.cpp's quantize tool does it: from the values the file stores."""
    ggml = read_ggml(path)
    target = path.with_name(path.name.replace(".bin", f"-{ggml_type}.bin"))
    return write_ggml(target, ggml.dims, {name: ggml.array(name) for name in ggml.tensors}, ggml.vocab, ggml_type)


@pytest.fixture(scope="module")
def tiny_parent(module_tmp):
    """Random weights with tiny's widths and 2 layers (of 4) as a ggml file, written by wconv's ggml writer (named like
    tiny, whose alignment heads it cannot have: its decoders have no alignment output)."""
    root = module_tmp("ggml-distil")
    dims = dataclasses.replace(real_dims("tiny"), n_audio_layer=2, n_text_layer=2)
    parent_state = random_state_dict(dims, seed=3)
    return root, dims, parent_state, write_ggml(root / "ggml-tiny.bin", dims, parent_state, vocab_from_tiktoken(multilingual=True))


@pytest.fixture(scope="module")
def parent_converted(tiny_parent):
    """The tiny ggml file converted once, verified, into ``models``: whisper.cpp's layout with the stateful decoder."""
    root, _, _, parent = tiny_parent
    return pipeline.run(wconv.Job(source=str(parent), output=root / "models", decoder="stateful"))


@pytest.fixture(scope="module")
def ggml_pair(tiny_parent, parent_converted):
    """The tiny parent ggml file converted into ``models``, and distil files (f16, q5_0) sharing its encoder."""
    root, dims, parent_state, parent = tiny_parent
    distil_dims, state = distil_state(parent_state, dims)
    distil = write_ggml(root / "ggml-distil-tiny.bin", distil_dims, state, vocab_from_tiktoken(multilingual=True))
    distils = {"f16": distil, "q5_0": requantized(distil, "q5_0")}
    return root, parent, distils, parent_converted.manifest_path.parent


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
    assert record["parent"] == "tiny" and record["encoder_tensors_compared"] == ENCODER_TENSORS
    assert read_ggml(output / distils[kind].name).dims.n_text_layer == 1  # the distil's own decoder


def test_a_distil_whose_encoder_differs_is_refused_naming_the_tensor(ggml_pair, tmp_path):
    root, parent, distils, _ = ggml_pair
    ggml = read_ggml(distils["f16"])
    state = {name: torch.from_numpy(np.array(ggml.array(name))) for name in ggml.tensors}
    state["encoder.blocks.1.mlp.0.weight"][0, 0] += 0.5
    changed = write_ggml(tmp_path / "ggml-distil-changed.bin", ggml.dims, state, ggml.vocab)
    done = invoke("run", "--family", "distil", changed, "--parent", parent, "-o", tmp_path / "out")
    assert done.exit_code == 2 and done.output.count("\n") == 1
    assert "encoder.blocks.1.mlp.0.weight" in done.output and "--convert-own-encoder" in done.output
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


# The parent's encoder as Xcode compiles it: Linux cannot compile, so the test lays the directory out itself.

def compiled_like_xcrun(package: Path, target: Path) -> Path:
    """``package`` laid out as ``xcrun coremlcompiler compile`` lays out an ML program's ``.mlmodelc``: ``metadata.json``
    (a list of one object; each input and output as Core ML's ``FeatureType::toDictionary`` in coremltools' mlmodel/src
    writes it: strings such as ``"dataType": "Float32"``, ``"shape": "[1, 80, 3000]"``, ``"hasShapeFlexibility": "0"``),
    ``model.mil``, ``weights/weight.bin`` (the package's weight blob), ``coremldata.bin`` and
    ``analytics/coremldata.bin``. wconv reads only metadata.json; the program text and Core ML's binary
    descriptions are stand-ins here, linked byte for byte like the rest."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    data_types = {number: name.title() for name, number in ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}

    def feature(description) -> dict:
        array = description.type.multiArrayType
        data_type = data_types[array.dataType]
        return {"hasShapeFlexibility": "0", "isOptional": "0", "dataType": data_type, "shortDescription": "",
                "formattedType": f"MultiArray ({data_type} {' x '.join(map(str, array.shape))})",
                "shape": "[" + ", ".join(map(str, array.shape)) + "]", "name": description.name, "type": "MultiArray"}

    metadata = [{"metadataOutputVersion": "3.0", "specificationVersion": spec.specificationVersion,
                 "modelType": {"name": "MLModelType_mlProgram"}, "isUpdatable": "0", "method": "predict",
                 "inputSchema": [feature(f) for f in spec.description.input],
                 "outputSchema": [feature(f) for f in spec.description.output], "stateSchema": []}]
    (target / "weights").mkdir(parents=True)
    (target / "analytics").mkdir()
    shutil.copy(package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin", target / "weights" / "weight.bin")
    (target / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (target / "model.mil").write_text("program(1.0)\n")
    (target / "coremldata.bin").write_bytes(b"\x00" * 64)
    (target / "analytics" / "coremldata.bin").write_bytes(b"\x00" * 16)
    return target


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


WHISPER_CPP_ENCODER_IO = {"inputs": [{"name": "logmel_data", "shape": [1, 80, 3000], "dtype": "float32"}],
                          "outputs": [{"name": "output", "shape": [1, 1500, 384], "dtype": "float32"}]}


def test_a_compiled_parent_encoder_is_linked_with_nothing_traced_converted_or_compiled(ggml_pair, tmp_path, monkeypatch):
    """The seed's shortcut as downloaded: the parent's ``.mlmodelc`` becomes the distil's, proven (or trusted), on macOS too."""
    import sys

    root, parent, distils, output = ggml_pair
    beside = compiled_like_xcrun(output / "ggml-tiny-encoder.mlpackage", tmp_path / "downloaded" / "ggml-tiny-encoder.mlmodelc")
    shutil.copy(output / "tiny.manifest.json", beside.parent)  # the parent's wconv manifest, listing the package it was compiled from
    lone = shutil.copytree(beside, tmp_path / "lone" / beside.name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xcrun").write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n')
    (bin_dir / "xcrun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(sys, "platform", "darwin")  # where wconv would compile an encoder it converted

    for proof, given, flags in [("manifest", beside, {}), ("parent-ggml", lone, {"parent_ggml": str(parent)}),
                                ("trusted", lone, {"trust_parent": True})]:
        out = tmp_path / proof
        result, calls = run_with_recorder(wconv.Job(source=str(distils["f16"]), family="distil", output=out, parent=str(given), **flags))
        assert calls == [] and not (bin_dir / "calls").exists()
        linked = out / "ggml-distil-tiny-encoder.mlmodelc"
        assert tree_bytes(linked) == tree_bytes(given) and not (out / "ggml-distil-tiny-encoder.mlpackage").exists()
        assert sorted(path.name for path in out.iterdir()) == ["distil-tiny.manifest.json", "ggml-distil-tiny-encoder.mlmodelc", "ggml-distil-tiny.bin"]
        manifest = json.loads((out / "distil-tiny.manifest.json").read_text())
        entry = manifest["artifacts"][0]
        assert (entry["file"], entry["kind"], entry["min_target"], entry["reused_from"]) == (linked.name, "encoder", "iOS16", str(given))
        assert {key: entry[key] for key in WHISPER_CPP_ENCODER_IO} == WHISPER_CPP_ENCODER_IO  # read from its metadata.json
        record = manifest["reused"][linked.name]
        assert (record["compiled"], record["verified"], manifest["verify"]) == (True, False, [])
        assert ("parent_verify" in record) == (proof == "manifest")  # the package it was compiled from, verified then
        assert (manifest["parent_proof"], record.get("trusted", False)) == (proof, proof == "trusted")
        assert (record["parent"], record.get("encoder_tensors_compared", ENCODER_TENSORS)) == ("tiny", ENCODER_TENSORS)
        assert manifest["needs_compile"] is False and "compile_command" not in manifest and result.notes == []


def test_a_compiled_encoder_with_other_io_or_no_metadata_is_refused(ggml_pair, tmp_path):
    root, parent, distils, output = ggml_pair
    other = compiled_like_xcrun(output / "ggml-tiny-encoder.mlpackage", tmp_path / "other" / "ggml-tiny-encoder.mlmodelc")
    metadata = json.loads((other / "metadata.json").read_text())
    metadata[0]["outputSchema"][0]["shape"] = "[1, 384, 1, 1500]"  # WhisperKit's channels-first AudioEncoder output
    (other / "metadata.json").write_text(json.dumps(metadata))
    broken = shutil.copytree(other, tmp_path / "broken" / other.name)
    (broken / "metadata.json").unlink()
    flexible = compiled_like_xcrun(output / "ggml-tiny-encoder.mlpackage", tmp_path / "flexible" / "ggml-tiny-encoder.mlmodelc")
    metadata = json.loads((flexible / "metadata.json").read_text())
    metadata[0]["inputSchema"][0].update(hasShapeFlexibility="1", enumeratedShapes="[[1, 80, 1500], [1, 80, 3000]]")
    (flexible / "metadata.json").write_text(json.dumps(metadata))
    assert wconv.describe_io(flexible)["inputs"][0]["enumerated_shapes"] == [[1, 80, 1500], [1, 80, 3000]]
    for compiled, message in [(other, "has other inputs or outputs than whisper.cpp's encoder"), (broken, "metadata.json"),
                              (flexible, "has other inputs or outputs than whisper.cpp's encoder")]:
        done = invoke("run", "--family", "distil", distils["f16"], "--parent", compiled, "--parent-ggml", parent, "-o", tmp_path / "out")
        error = done.output.splitlines()[-1]  # after the load stage's progress line (the plan says what IO is wanted)
        assert done.exit_code == 2 and error.startswith("Error: ") and "Traceback" not in done.output, done.output
        assert str(compiled) in error and message in error and not (tmp_path / "out").exists()


# The ggml family's other targets, from the tiny ggml file: the stateful decoder and WhisperKit's folder.

def assert_verified_against_the_gate(manifest: dict, artifacts: list[str]) -> None:
    gate = JOB_DEFAULTS["min_psnr"]
    psnrs = {check["artifact"]: check["metrics"]["psnr"] for check in manifest["verify"]}
    print("verify PSNR (dB):", {name: round(psnr, 1) for name, psnr in psnrs.items()})
    assert sorted(psnrs) == sorted(artifacts)
    assert all(check["passed"] and check["metrics"]["psnr"] >= gate and f"gate {gate:g} dB (pass)" in check["message"]
               for check in manifest["verify"])


def io_of(path: Path) -> dict:
    described = wconv.describe_io(path)
    return {key: [(spec["name"], spec["shape"], spec["dtype"]) for spec in described[key]] for key in ("inputs", "outputs", "states")}


def test_the_stateful_decoder_converts_from_a_ggml_file_and_verifies(parent_converted, tiny_parent):
    _, dims, _, parent = tiny_parent
    output, manifest = parent_converted.manifest_path.parent, parent_converted.manifest
    assert sorted(path.name for path in output.iterdir() if "distil" not in path.name) == [
        "ggml-tiny-encoder.mlpackage", "ggml-tiny.bin", "tiny-decoder-stateful.mlpackage", "tiny.manifest.json"]
    assert io_of(output / "ggml-tiny-encoder.mlpackage") == {
        "inputs": [("logmel_data", [1, 80, 3000], "float32")], "outputs": [("output", [1, 1500, 384], "float32")], "states": []}
    cache = [1, dims.n_text_state, 1, 448]
    assert io_of(output / "tiny-decoder-stateful.mlpackage") == {
        "inputs": [("input_ids", [1], "int32"), ("cache_length", [1], "int32"), ("encoder_output_embeds", [1, 384, 1, 1500], "float16")],
        "outputs": [("logits", [1, 1, dims.n_vocab], "float16")],
        "states": [(f"{kind}_cache_{layer}", cache, "float16") for layer in range(dims.n_text_layer) for kind in ("key", "value")]}
    assert [entry.get("min_target") for entry in manifest["artifacts"]] == ["iOS16", "iOS18", None]
    assert manifest["compile_command"] == f"xcrun coremlcompiler compile {output}/ggml-tiny-encoder.mlpackage {output}"  # what whisper.cpp loads
    assert (output / "ggml-tiny.bin").read_bytes() == parent.read_bytes()  # the decoder side, written back byte for byte
    assert_verified_against_the_gate(manifest, ["ggml-tiny-encoder.mlpackage", "tiny-decoder-stateful.mlpackage"])


@pytest.fixture(scope="module")
def whisperkit_converted(tiny_parent):
    root, _, _, parent = tiny_parent
    return pipeline.run(wconv.Job(source=str(parent), output=root / "whisperkit", layout="whisperkit"))


def test_whisperkits_folder_converts_from_a_ggml_file_and_verifies(whisperkit_converted, tiny_parent):
    _, dims, _, _ = tiny_parent
    folder = whisperkit_converted.manifest_path.parent
    assert folder.name == "tiny" and sorted(path.name for path in folder.iterdir()) == [
        "AudioEncoder.mlpackage", "MelSpectrogram.mlpackage", "TextDecoder.mlpackage", "config.json", "generation_config.json",
        "tiny.manifest.json"]
    features, embeds = ("melspectrogram_features", [1, 80, 1, 3000], "float16"), ("encoder_output_embeds", [1, 384, 1, 1500], "float16")
    assert io_of(folder / "MelSpectrogram.mlpackage") == {"inputs": [("audio", [480000], "float32")], "outputs": [features], "states": []}
    assert io_of(folder / "AudioEncoder.mlpackage") == {"inputs": [features], "outputs": [embeds], "states": []}
    cache, update, width = [1, dims.n_text_state * dims.n_text_layer, 1, 448], [1, dims.n_text_state * dims.n_text_layer, 1, 1], 448
    assert io_of(folder / "TextDecoder.mlpackage") == {
        "inputs": [("input_ids", [1], "int32"), ("cache_length", [1], "int32"), ("key_cache", cache, "float16"),
                   ("value_cache", cache, "float16"), ("kv_cache_update_mask", [1, width], "int32"), embeds,
                   ("decoder_key_padding_mask", [1, width], "float16")],
        "outputs": [("logits", [1, 1, dims.n_vocab], "float16"), ("key_cache_updates", update, "float16"),
                    ("value_cache_updates", update, "float16")],
        "states": []}
    assert json.loads((folder / "config.json").read_text())["decoder_layers"] == dims.n_text_layer
    assert_verified_against_the_gate(whisperkit_converted.manifest,
                                     ["MelSpectrogram.mlpackage", "AudioEncoder.mlpackage", "TextDecoder.mlpackage"])


def test_a_distil_links_the_parents_whisperkit_audio_encoder_when_converted(whisperkit_converted, ggml_pair, tmp_path, monkeypatch):
    """The parent's folder in the same output: its AudioEncoder is linked after the same proof, the rest converted."""
    root, parent, distils, _ = ggml_pair
    output = whisperkit_converted.manifest_path.parent.parent
    monkeypatch.setenv("WCONV_CACHE_DIR", str(tmp_path / "cache"))
    job = wconv.Job(source=str(distils["f16"]), family="distil", output=output, verify=False, parent=str(parent), layout="whisperkit")
    _, calls = run_with_recorder(job)
    assert ("trace", "AudioEncoder.mlpackage") not in calls and ("convert", "AudioEncoder.mlpackage") not in calls
    assert ("convert", "MelSpectrogram.mlpackage") in calls and ("convert", "TextDecoder.mlpackage") in calls
    parent_encoder = output / "tiny" / "AudioEncoder.mlpackage"
    assert weight_bytes(output / "distil-tiny" / "AudioEncoder.mlpackage") == weight_bytes(parent_encoder)
    manifest = json.loads((output / "distil-tiny" / "distil-tiny.manifest.json").read_text())
    assert manifest["reused"]["AudioEncoder.mlpackage"]["path"] == str(parent_encoder)
    assert not (tmp_path / "cache").exists()


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


"""Core ML compression on the real Whisper base weights: transcripts against openai-whisper fp32 (with the
fp32 margin of every differing token), PSNR of the compressed and uncompressed model side by side, mixed-bit
against uniform palettes, `wconv compress` == `wconv run --compress`, WhisperKit's size suffix, bad input."""

import json

import pytest
import torch
from click.testing import CliRunner

import wconv
from wconv.cli import cli
from wconv.compress.apply import op_census
from wconv.job import ArtifactKind
from wconv.layouts.whisperkit import WhisperKitLayout
from wconv.manifest import read_manifest
from wconv.runtime.decoding import transcribe_tokens
from wconv.runtime.reference import reference_tokens
from wconv.tools.compress_saved import compress_saved
from wconv.tools.random_checkpoints import write_random_checkpoint
from wconv.tools.transcribe import encode
from wconv.verify.metrics import edit_distance

ENCODER, DECODER = "ggml-base-encoder.mlpackage", "base-decoder-stateful.mlpackage"
MAX_TOKEN_ERROR_RATE = 0.05
SMALL_MARGIN = 1.0  # nats: a token that differs from fp32's must have been a near-tie there


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def fp16_folder(sample_dir, module_tmp):
    """The real base encoder and stateful decoder, converted and verified once, uncompressed (Core ML only)."""
    output = module_tmp("compress") / "base"
    wconv.convert(sample_dir, family="ct2", output=output, layout="coreml", decoder="stateful")
    return output


@pytest.fixture(scope="module")
def compressed(fp16_folder):
    """`wconv compress` of packages of the fp16 folder, each spec once (gate 0 dB: the numbers are the tests' to judge)."""
    done = {}

    def get(spec: str, *files: str):
        if (spec, files) not in done:
            output = fp16_folder.parent / f"{spec.replace(':', '-')}-{len(files)}"
            done[spec, files] = compress_saved([fp16_folder / name for name in files], spec, output, min_psnr=0)
        return done[spec, files]

    return get


def first_difference_margin(model, features, expected: list[int], actual: list[int]) -> float | None:
    """fp32's log-prob of its own token minus that of the compressed model's token, where they first differ (None: same)."""
    from wconv.runtime.decoding import get_tokenizer

    if actual == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    tokenizer = get_tokenizer(model.dims, True)
    prefix = list(tokenizer.sot_sequence_including_notimestamps) + expected[:at]
    with torch.no_grad():
        logits = model.decoder(torch.tensor([prefix]), features)[0, -1]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    ours = expected[at] if at < len(expected) else tokenizer.eot
    theirs = actual[at] if at < len(actual) else tokenizer.eot
    return float(log_probs[ours] - log_probs[theirs])


def transcripts_against_fp32(folder, model, fp32_transcripts, encoded: dict, with_decoder: bool):
    """(token error rate over the clips, [(clip, margin)] of the clips that differ) for the converted models in ``folder``;
    ``encoded`` holds each clip's output of the converted encoder."""
    errors = reference_total = 0
    margins = []
    for clip, encoded in encoded.items():
        features, expected = fp32_transcripts[clip]
        if with_decoder:
            tokens = transcribe_tokens(encoded, folder / DECODER, ArtifactKind.DECODER_STATEFUL, model.dims, True)
        else:
            tokens = reference_tokens(model, encoded, "en")
        errors += edit_distance(tokens, expected)
        reference_total += len(expected)
        if (margin := first_difference_margin(model, features, expected, tokens)) is not None:
            margins.append((clip, margin))
    return errors / reference_total, margins


@pytest.mark.parametrize("spec", ["int8", "palette6"])
def test_compressed_models_transcribe_like_fp32(spec, compressed, openai_base_model, fp32_transcripts, speech_clips):
    result = compressed(spec, ENCODER, DECODER)
    folder = result.manifest_path.parent
    encoded = {clip.name: encode(result.manifest | {"_path": str(result.manifest_path)}, clip)[0] for clip in speech_clips}
    for with_decoder in (False, True) if spec == "int8" else (False,):  # palette6's decoder: CI's 30 minutes (README: measured)
        rate, margins = transcripts_against_fp32(folder, openai_base_model, fp32_transcripts, encoded, with_decoder)
        print(f"{spec} {'encoder + stateful decoder' if with_decoder else 'encoder'}: token error rate {rate:.3f}, "
              f"fp32 margins where the first token differs: {margins}")
        assert rate <= MAX_TOKEN_ERROR_RATE
        assert all(abs(margin) < SMALL_MARGIN for _, margin in margins), margins


@pytest.mark.parametrize("spec, bits", [("int8", 8), ("palette6", 6)])
def test_manifest_records_sizes_and_psnr_side_by_side(spec, bits, compressed):
    result = compressed(spec, ENCODER, DECODER)
    entries = {entry["file"]: entry for entry in result.manifest["artifacts"]}
    assert result.manifest["options"]["compress"] == spec
    for name in (ENCODER, DECODER):
        record = entries[name]["compression"]
        on_disk = sum(f.stat().st_size for f in (result.manifest_path.parent / name / "Data/com.apple.CoreML/weights").iterdir())
        assert record["spec"] == spec and record["weight_bytes"] == on_disk
        # biases, LayerNorms and positional embeddings stay fp16; below 8 bits the token embedding keeps 8
        assert bits <= record["bits_per_weight"] < bits + 1.2
        assert record["weight_bytes"] == pytest.approx(record["bits_per_weight"] / 16 * record["uncompressed_weight_bytes"], rel=1e-3)
        (row,) = record["checks"]
        assert row["uncompressed_psnr"] > row["psnr"] > 35, row
    assert entries[ENCODER]["compression"]["checks"][0]["uncompressed_psnr"] > 70
    assert "token_embedding_bits" not in entries[ENCODER]["compression"]
    assert entries[DECODER]["compression"].get("token_embedding_bits") == (8 if bits < 8 else None)
    op = "constexpr_affine_dequantize" if spec == "int8" else "constexpr_lut_to_dense"
    census = op_census(result.manifest_path.parent / ENCODER)
    assert census[op] == 38 and census.get("const", 0) > 0  # 2 audio convs + 6 blocks x (4 attention + 2 MLP)


def test_mixed_4_beats_palette4_at_the_same_size(compressed):
    """The recipe searched on speech spends the same bits where they matter: more PSNR than a uniform 4-bit palette."""
    mixed = compressed("mixed:4", ENCODER).manifest["artifacts"]
    uniform = compressed("palette4", ENCODER).manifest["artifacts"]
    mixed, uniform = ({entry["file"]: entry for entry in entries}[ENCODER]["compression"] for entries in (mixed, uniform))
    print(f"mixed:4 {mixed['checks'][0]['psnr']:.2f} dB at {mixed['weight_bytes']} bytes; "
          f"palette4 {uniform['checks'][0]['psnr']:.2f} dB at {uniform['weight_bytes']} bytes")
    assert mixed["checks"][0]["psnr"] > uniform["checks"][0]["psnr"] + 1.0
    assert mixed["weight_bytes"] <= 1.05 * uniform["weight_bytes"]
    recipe = mixed["recipe"]
    assert recipe["average_bits"] <= 4.0 and set(recipe["layers"].values()) <= {2, 4, 6, 8}  # iOS16: no 3-bit
    assert len(recipe["sensitivity"]) == 38 and recipe["measured_on"] == "log-mel of bundled speech clip"
    assert json.loads((compressed("mixed:4", ENCODER).manifest_path.parent / mixed["recipe_file"]).read_text()) == recipe


def test_a_saved_recipe_gives_the_same_model(compressed, fp16_folder, tmp_path):
    mixed = compressed("mixed:4", ENCODER)
    recipe_file = mixed.manifest_path.parent / "ggml-base-encoder.recipe.json"
    again = compress_saved([fp16_folder / ENCODER], str(recipe_file), tmp_path / "again", min_psnr=0)
    weights = "ggml-base-encoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    assert (tmp_path / "again" / weights).read_bytes() == (mixed.manifest_path.parent / weights).read_bytes()
    assert again.manifest["artifacts"][0]["compression"]["method"] == "recipe"


# ---------------------------------------------------------------------------------------- tiny random weights


@pytest.fixture(scope="module")
def tiny(module_tmp):
    return write_random_checkpoint(module_tmp("tiny") / "tiny.pt", "tiny")


def test_wconv_compress_equals_run_with_compress(tiny, tmp_path):
    assert invoke("run", tiny, "-o", tmp_path / "plain", "--no-verify").exit_code == 0
    compressing = invoke("compress", tmp_path / "plain" / "ggml-tiny-encoder.mlpackage", "--compress", "int8")
    assert compressing.exit_code == 0, compressing.output
    assert invoke("run", tiny, "-o", tmp_path / "direct", "--compress", "int8").exit_code == 0
    weights = "ggml-tiny-encoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    assert (tmp_path / "plain-int8" / weights).read_bytes() == (tmp_path / "direct" / weights).read_bytes()
    # the rest of the folder comes along: whisper.cpp finds its ggml file beside the compressed encoder
    assert sorted(p.name for p in (tmp_path / "plain-int8").iterdir()) == sorted(p.name for p in (tmp_path / "direct").iterdir())
    manifests = [read_manifest(tmp_path / name) for name in ("plain-int8", "direct")]
    assert [m["options"]["compress"] for m in manifests] == ["int8", "int8"]
    assert all(m["verify"][0]["passed"] for m in manifests)


def test_whisperkit_folder_gets_argmax_size_suffix(tiny, tmp_path):
    result = wconv.convert(tiny, output=tmp_path, layout="whisperkit", compress="int8", verify=False)
    folder = result.manifest_path.parent
    size = sum(f.stat().st_size for name in ("AudioEncoder", "TextDecoder") for f in (folder / f"{name}.mlpackage").rglob("*") if f.is_file())
    assert folder.name == f"tiny_{round(size / 1e6)}MB" and sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    entries = {entry["file"]: entry for entry in result.manifest["artifacts"]}
    assert "compression" not in entries["MelSpectrogram.mlpackage"] and "constexpr_lut_to_dense" not in op_census(folder / "MelSpectrogram.mlpackage")
    assert entries["AudioEncoder.mlpackage"]["compression"]["spec"] == "int8"
    layout, model = WhisperKitLayout(), result.model
    assert layout.final_folder(model, wconv.Job(source="x", compress="int8", folder_suffix="v1"), folder) == "tiny_v1"
    assert layout.final_folder(model, wconv.Job(source="x"), folder) == "tiny"


def test_a_spec_needing_ios18_raises_the_target_with_a_note(tiny, tmp_path):
    result = wconv.convert(tiny, output=tmp_path, layout="coreml", compress="int4", verify=False)
    assert result.manifest["artifacts"][0]["specification_version"] == 9  # iOS18
    # 2 audio convs + 4 blocks x 6: all but conv1, whose 80 mel channels are no multiple of int4's block of 32
    assert op_census(result.paths[0])["constexpr_blockwise_shift_scale"] == 25
    assert any("raised" in note and "iOS18" in note for note in result.notes)


@pytest.mark.parametrize("args, named", [
    (["--compress", "palette9"], "--compress 'palette9'"),
    (["--compress", "mixed:9"], "--compress 'mixed:9'"),
    (["--compress", "mixed:0.5"], "--compress 'mixed:0.5'"),
    (["--compress", "int4", "--min-target", "iOS16"], "--min-target iOS18"),
    (["--compress", "missing-recipe.json"], "missing-recipe.json"),
])
def test_bad_specs_are_one_line_exit_2_and_write_nothing(tiny, tmp_path, args, named):
    result = invoke("run", tiny, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_recipe_naming_unknown_layers_is_refused_and_nothing_is_written(tiny, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"layers": {"encoder.blocks.0.mlp.0.weight": 4, "encoder.blocks.9.attn.nope.weight": 2}}))
    result = invoke("run", tiny, "-o", tmp_path / "out", "--layout", "coreml", "--compress", recipe, "--no-verify")
    (error,) = [line for line in result.output.splitlines() if "Error" in line]  # after the stages' progress lines
    assert result.exit_code == 2 and error.startswith("Error: --compress") and "Traceback" not in result.output
    assert "encoder.blocks.9.attn.nope.weight" in error and not (tmp_path / "out").exists()


def test_compressing_a_compressed_package_is_refused(tiny, tmp_path):
    assert invoke("run", tiny, "-o", tmp_path / "small", "--compress", "int8", "--no-verify").exit_code == 0
    result = invoke("compress", tmp_path / "small" / "ggml-tiny-encoder.mlpackage", "--compress", "palette4", "-o", tmp_path / "again")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "already compressed" in result.output
    assert not (tmp_path / "again").exists()

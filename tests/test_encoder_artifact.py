"""The saved whisper.cpp encoder artifact: IO contract, fp16 compute, ANE layout, CLI behaviour."""

import json
import shutil
from collections import Counter

import coremltools as ct
import pytest
from click.testing import CliRunner
from coremltools.converters.mil.frontend.milproto import load as milproto_load

from wconv.cli import cli
from wconv.tools.random_checkpoints import write_random_checkpoint


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def converted(module_tmp):
    """A tiny-dims random checkpoint converted once by `wconv run` (no verify: covered elsewhere)."""
    root = module_tmp("encoder")
    checkpoint = write_random_checkpoint(root / "tiny.pt", "tiny", seed=5)
    result = invoke("run", checkpoint, "--output", root / "models", "--no-verify")
    assert result.exit_code == 0, result.output
    return root, checkpoint, root / "models" / "ggml-tiny-encoder.mlpackage"


def load_program(path):
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return spec, milproto_load.load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


def test_spec_has_whispercpp_io_names_shapes_and_float32(converted):
    _, _, package = converted
    spec, _ = load_program(package)
    (inp,), (out,) = spec.description.input, spec.description.output
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert (inp.name, list(inp.type.multiArrayType.shape), inp.type.multiArrayType.dataType) == ("logmel_data", [1, 80, 3000], float32)
    assert (out.name, list(out.type.multiArrayType.shape), out.type.multiArrayType.dataType) == ("output", [1, 1500, 384], float32)
    assert spec.specificationVersion == 7  # iOS16 / macOS13, the default --min-target


def test_program_computes_in_fp16_without_linear_and_with_rank4_activations(converted):
    _, _, package = converted
    _, program = load_program(package)
    operations = list(program.functions["main"].operations)
    kinds = Counter(op.op_type for op in operations)
    assert kinds["linear"] == 0 and kinds["matmul"] == 0
    assert kinds["conv"] == 2 + 4 * 6  # two audio convs + q,k,v,out,fc1,fc2 per block

    fp32_ops = [op for op in operations if op.op_type != "const" and any(o.dtype == ct.converters.mil.mil.types.fp32 for o in op.outputs)]
    assert [op.op_type for op in fp32_ops] == ["cast"]  # only the output cast back to float32
    casts = [op for op in operations if op.op_type == "cast"]
    assert len(casts) == 2  # logmel_data -> fp16 and the output -> fp32

    for op in operations:
        if op.op_type in ("conv", "einsum", "softmax", "layer_norm", "batch_norm", "gelu"):
            assert all(o.rank == 4 for o in op.outputs), op.name


def test_manifest_records_source_tools_and_io(converted):
    root, checkpoint, package = converted
    manifest = json.loads((package.parent / "tiny.manifest.json").read_text())
    assert manifest["family"] == "openai"
    assert manifest["dims"]["n_audio_state"] == 384
    assert len(manifest["checkpoint_sha256"]) == 64
    assert set(manifest["versions"]) >= {"wconv", "torch", "coremltools"}
    artifact, ggml = manifest["artifacts"]
    assert (ggml["file"], ggml["kind"], ggml["ggml_type"]) == ("ggml-tiny.bin", "ggml", "f16")
    assert artifact["file"] == package.name
    assert artifact["inputs"] == [{"name": "logmel_data", "shape": [1, 80, 3000], "dtype": "float32"}]
    assert artifact["outputs"] == [{"name": "output", "shape": [1, 1500, 384], "dtype": "float32"}]


def tree_bytes(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_second_run_without_force_fails_and_keeps_the_artifact(converted):
    root, checkpoint, package = converted
    before = tree_bytes(package)
    result = invoke("run", checkpoint, "--output", package.parent, "--no-verify")
    assert result.exit_code == 2
    assert "already exists" in result.output and "--force" in result.output
    assert tree_bytes(package) == before


def test_truncated_checkpoint_is_one_line_exit_2_nothing_written(converted, tmp_path):
    _, checkpoint, _ = converted
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    result = invoke("run", truncated, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "cut.pt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, expected", [
    ("missing.pt", "missing.pt does not exist"),
    ("large-v9", "unknown openai-whisper model 'large-v9'"),
])
def test_bad_model_names_fail_with_one_line(tmp_path, source, expected):
    result = invoke("run", "--family", "openai", source, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert expected in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_is_exit_2(converted, tmp_path):
    _, checkpoint, _ = converted
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke("run", checkpoint, "--output", blocker / "sub")
    assert result.exit_code == 2 and "output directory" in result.output


def test_force_replaces_the_artifact(converted, tmp_path):
    _, checkpoint, package = converted
    output = tmp_path / "models"
    shutil.copytree(package.parent, output)
    (output / package.name / "marker").write_text("old")
    result = invoke("run", checkpoint, "--output", output, "--no-verify", "--force")
    assert result.exit_code == 0, result.output
    assert not (output / package.name / "marker").exists()
    assert not list(output.glob(".wconv-*"))


def test_enumerated_audio_lengths_write_a_flexible_encoder(converted, tmp_path):
    _, checkpoint, _ = converted
    result = invoke("run", checkpoint, "--output", tmp_path, "--audio-lengths", "1000,3000")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "tiny.manifest.json").read_text())
    assert [c["artifact"] for c in manifest["verify"]] == ["ggml-tiny-encoder.mlpackage", "ggml-tiny-encoder-flex.mlpackage"]
    assert all(c["metrics"]["psnr"] >= 50 for c in manifest["verify"])
    spec, _ = load_program(tmp_path / "ggml-tiny-encoder-flex.mlpackage")
    shapes = [list(s.shape) for s in spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes]
    assert sorted(shapes) == [[1, 80, 1000], [1, 80, 3000]]


def test_audio_lengths_without_the_30_s_window_are_refused(converted, tmp_path):
    _, checkpoint, _ = converted
    result = invoke("run", checkpoint, "--output", tmp_path / "out", "--audio-lengths", "1000,2000")
    assert result.exit_code == 2 and "must include 3000" in result.output
    assert not (tmp_path / "out").exists()


def test_the_package_is_readable_by_everyone_like_the_ggml_file(converted):
    import os
    import stat

    _, _, package = converted
    umask = os.umask(0)
    os.umask(umask)
    for path in [package, *package.rglob("*"), package.parent / "ggml-tiny.bin"]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path

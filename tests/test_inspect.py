"""`wconv inspect`: contents, the static ANE lint and device fit of wconv's own artifacts, an ANE-hostile MIL
program, whisper.cpp's fp32 encoder and compressed packages; the lint summary in every manifest."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import wconv
from wconv.cli import cli
from wconv.inspection.compute_plan import side_by_side, unavailable_reason
from wconv.inspection.lint import lint_program
from wconv.inspection.program import read_program
from wconv.inspection.report import inspect_package, inspect_paths

RULES_OF_HOSTILE_OPS = {"fp32_mul": "fp32", "rank5_mul": "rank>4", "wide_relu": "dim>16384",
                        "dynamic_reshape": "dynamic-shape", "runtime_weight_conv": "op-type"}


@pytest.fixture(scope="module")
def converted(module_tmp, base_whisperkit):
    """Random weights with tiny's widths and 2 layers (of 4) as whisper.cpp's files with a stateful decoder, and the
    session's WhisperKit folder of the real base weights (the cache-io decoder)."""
    import dataclasses

    import torch

    from wconv.tools.random_checkpoints import random_state_dict, real_dims

    root = module_tmp("inspect")
    dims = dataclasses.replace(real_dims("tiny"), n_audio_layer=2, n_text_layer=2)
    checkpoint = root / "narrow.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": random_state_dict(dims)}, checkpoint)
    whispercpp = wconv.convert(checkpoint, "openai", root / "whispercpp", decoder="stateful", verify=False)
    manifest_path = base_whisperkit[1] / "base.manifest.json"
    whisperkit = SimpleNamespace(manifest_path=manifest_path, manifest=json.loads(manifest_path.read_text()))
    return {"whispercpp": whispercpp, "whisperkit": whisperkit, "root": root}


def test_wconv_encoders_and_decoders_lint_at_99_percent_of_ops(converted):
    folder = converted["whisperkit"].manifest_path.parent
    packages = {path.name: path for path in converted["whispercpp"].paths if path.suffix == ".mlpackage"}
    packages.update({name: folder / name for name in ("AudioEncoder.mlpackage", "TextDecoder.mlpackage")})
    assert set(packages) == {"ggml-narrow-encoder.mlpackage", "narrow-decoder-stateful.mlpackage", "AudioEncoder.mlpackage", "TextDecoder.mlpackage"}
    for name, path in packages.items():
        ane = inspect_package(path)["ane"]
        assert ane["total_ops"] > 80 and ane["eligible_ops"] / ane["total_ops"] >= 0.99, (name, ane["ineligible"])
        assert ane["eligible_flops_fraction"] > 0.999
        # what is left: the decoders' logits, joined from their 16384-wide chunks into one 51865-wide output
        assert {row["rule"] for row in ane["ineligible"]} <= {"dim>16384"}, name
        assert bool(ane["ineligible"]) == ("Decoder" in name or "decoder" in name)
    mel = inspect_package(folder / "MelSpectrogram.mlpackage")["ane"]  # fp32 inside on purpose (WhisperKit runs it on the GPU)
    assert {"fp32", "dim>16384"} <= {rule for row in mel["ineligible"] for rule in row["rules"]}


def test_every_manifest_artifact_carries_the_lint_summary(converted):
    for result in (converted["whispercpp"], converted["whisperkit"]):
        for entry in result.manifest["artifacts"]:
            if not entry["file"].endswith(".mlpackage"):
                continue
            summary = entry["ane_lint"]
            ane = inspect_package(result.manifest_path.parent / entry["file"])["ane"]
            assert (summary["eligible_ops"], summary["total_ops"]) == (ane["eligible_ops"], ane["total_ops"])
            assert sum(summary["ineligible_by_rule"].values()) >= len(ane["ineligible"])


def test_contents_of_a_whisperkit_folder_as_json_lines(converted):
    folder = converted["whisperkit"].manifest_path.parent
    result = CliRunner().invoke(cli, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    reports = {json.loads(line)["artifact"].rsplit("/", 1)[-1]: json.loads(line) for line in result.stdout.splitlines()}
    assert set(reports) == {"MelSpectrogram.mlpackage", "AudioEncoder.mlpackage", "TextDecoder.mlpackage"}
    decoder = reports["TextDecoder.mlpackage"]
    for key in ("ops", "io", "min_target", "fits", "weights", "ane", "memory", "first_load", "compute_plan"):
        assert key in decoder
    assert decoder["min_target"] == "iOS16 / macOS13"
    assert [(f["name"], f["shape"], f["dtype"]) for f in decoder["io"]["inputs"]][2] == ("key_cache", [1, 3072, 1, 448], "float16")  # base: 6 layers x 512
    assert decoder["weights"]["by_storage"].keys() == {"fp16"} and decoder["weights"]["bits_per_weight"] == 16.0
    assert decoder["weights"]["by_layer"]["decoder.blocks.1"] > 0
    assert decoder["memory"]["kv_cache_bytes"] == 2 * 3072 * 448 * 2
    assert decoder["op_census"]["einsum"] == 6 * 2 * 2 * 8 and decoder["ops"] == sum(decoder["op_census"].values())
    assert decoder["first_load"]["attention_softmax_ops"] == 2 * 6 * 8  # self and cross attention, 6 layers, 8 heads
    assert decoder["compute_plan"]["available"] == (unavailable_reason() is None)
    encoder = reports["AudioEncoder.mlpackage"]
    assert encoder["memory"]["resident_bytes"] > encoder["weights"]["bytes"] > 0.9 * encoder["size_bytes"]
    assert "iPhone 12" in decoder["fits"] and decoder["folder"]["resident_bytes"] == sum(r["memory"]["resident_bytes"] for r in reports.values())


def test_a_ggml_file_reports_its_storage_and_no_ane_lint(converted):
    ggml = next(path for path in converted["whispercpp"].paths if path.suffix == ".bin")
    report, = inspect_paths([ggml])
    assert report["ane"] is None and report["ggml_type"] == "f16"
    assert report["weights"]["by_storage"].keys() == {"f16", "f32"}
    assert 16 < report["weights"]["bits_per_weight"] < 16.5  # biases, LayerNorms and positional embeddings stay f32
    assert report["weights"]["bytes"] < report["size_bytes"] < report["weights"]["bytes"] + 2_000_000  # + mel filters, vocabulary


def build_hostile_package(path):
    """A MIL program breaking one rule per named op, and one op (the softmax) that breaks none."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec((1, 8, 1, 16)), mb.TensorSpec((1, 2, 3, 4, 5)), mb.TensorSpec((1, 20000)),
                             mb.TensorSpec((4,), dtype=types.int32), mb.TensorSpec((8, 8, 1, 1))], opset_version=ct.target.iOS16)
    def hostile(x, cube, wide, new_shape, kernel):
        half = mb.cast(x=x, dtype="fp16")
        outputs = [
            mb.mul(x=x, y=np.float32(3.0), name="fp32_mul"),
            mb.mul(x=mb.cast(x=cube, dtype="fp16"), y=np.float16(2.0), name="rank5_mul"),
            mb.relu(x=mb.cast(x=wide, dtype="fp16"), name="wide_relu"),
            mb.reshape(x=half, shape=new_shape, name="dynamic_reshape"),
            mb.softmax(x=mb.conv(x=half, weight=mb.cast(x=kernel, dtype="fp16"), name="runtime_weight_conv"), axis=1, name="fine_softmax"),
        ]
        return tuple(mb.cast(x=out, dtype="fp32") if out.dtype == types.fp16 else out for out in outputs)

    ct.convert(hostile, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
               minimum_deployment_target=ct.target.iOS16).save(str(path))
    return path


def test_an_ane_hostile_package_is_flagged_op_by_op(tmp_path):
    report = inspect_package(build_hostile_package(tmp_path / "hostile.mlpackage"))
    flagged = {row["op"]: row["rule"] for row in report["ane"]["ineligible"]}
    assert {op: flagged.get(op) for op in RULES_OF_HOSTILE_OPS} == RULES_OF_HOSTILE_OPS
    assert "fine_softmax" not in flagged
    assert report["ane"]["eligible_flops_fraction"] < 0.05  # the conv and the wide relu hold the FLOPs
    assert report["io"]["inputs"][0] == {"name": "x", "shape": [1, 8, 1, 16], "dtype": "float32"}
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "hostile.mlpackage")])
    assert result.exit_code == 0 and "runtime_weight_conv (conv): op-type" in result.output


def test_the_lint_beside_a_compute_plan(tmp_path):
    """How the macOS side-by-side scores agreement, given a plan (placements keyed by output name)."""
    program = read_program(build_hostile_package(tmp_path / "hostile.mlpackage"))
    lint = lint_program(program)
    outputs = {op.name: op.outputs[0].name for op in program.ops if op.outputs}
    plan = {outputs[v.op]: {"preferred": "ane" if v.eligible else "cpu", "supported": ["cpu"], "cost": 0.1} for v in lint.verdicts}
    plan[outputs["wide_relu"]]["preferred"] = "ane"  # Core ML disagrees with the lint on one op
    del plan[outputs["fine_softmax"]]  # an op the plan does not know is left out
    compared = side_by_side(lint, outputs, plan)
    assert compared["ops"] == lint.total_ops - 1 and compared["ane_ops"] == lint.eligible_ops
    assert compared["agreement"] == pytest.approx((compared["ops"] - 1) / compared["ops"], abs=1e-4)
    assert compared["disagreements"] == [{"op": "wide_relu", "type": "relu", "lint": "dim>16384", "preferred": "ane", "supported": ["cpu"]}]


def test_whisper_cpp_fp32_encoder_is_reported_as_not_fp16(tmp_path):
    """whisper.cpp's converter at HEAD: openai-whisper's encoder, torch.jit.trace, ct.convert with FLOAT32 precision."""
    import coremltools as ct
    import torch
    import whisper.model
    from whisper.model import ModelDimensions, Whisper

    whisper.model.MultiHeadAttention.use_sdpa = False
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    encoder = Whisper(dims).encoder.eval()
    traced = torch.jit.trace(encoder, torch.randn(1, 80, 3000))
    model = ct.convert(traced, convert_to="mlprogram", inputs=[ct.TensorType(name="logmel_data", shape=(1, 80, 3000))],
                       outputs=[ct.TensorType(name="output")], compute_units=ct.ComputeUnit.ALL,
                       compute_precision=ct.precision.FLOAT32)
    model.save(str(tmp_path / "coreml-encoder-tiny.mlpackage"))
    report = inspect_package(tmp_path / "coreml-encoder-tiny.mlpackage")
    assert report["weights"]["by_storage"].keys() == {"fp32"} and report["weights"]["bits_per_weight"] == 32.0
    fp32_ops = [row for row in report["ane"]["ineligible"] if "fp32" in row["rules"]]
    assert len(fp32_ops) == report["ane"]["total_ops"] and report["ane"]["eligible_flops_fraction"] == 0.0
    assert {"rank>4"} & {rule for row in report["ane"]["ineligible"] for rule in row["rules"]} == set()


@pytest.mark.parametrize("how", ["int8", "lut4"])
def test_a_compressed_package_reports_its_bits_per_weight(converted, tmp_path, how):
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from wconv.compress.apply import compress, weight_bytes

    fp16 = next(path for path in converted["whispercpp"].paths if path.name == "ggml-narrow-encoder.mlpackage")
    if how == "int8":
        model = compress(fp16, "int8")
    else:
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="uniform", nbits=4, weight_threshold=2048))
        model = cto.palettize_weights(ct.models.MLModel(str(fp16), skip_model_load=True), config)
    model.save(str(tmp_path / "compressed.mlpackage"))
    weights = inspect_package(tmp_path / "compressed.mlpackage")["weights"]
    assert set(weights["by_storage"]) == {how, "fp16"}  # small tensors (biases, LayerNorms) stay fp16
    expected = 16 * weight_bytes(tmp_path / "compressed.mlpackage") / weight_bytes(fp16)  # the manifest's measure: file bytes
    assert weights["bits_per_weight"] == pytest.approx(expected, rel=0.01)
    assert (8 < weights["bits_per_weight"] < 10) if how == "int8" else (4 < weights["bits_per_weight"] < 4.5)


def test_bad_paths_are_one_line_exit_2(tmp_path):
    runner = CliRunner()
    (tmp_path / "model.mlmodelc").mkdir()
    (tmp_path / "empty").mkdir()
    for path, says in [(tmp_path / "missing.mlpackage", "does not exist"), (tmp_path / "model.mlmodelc", "compiled model"),
                       (tmp_path / "empty", "holds no .mlpackage")]:
        result = runner.invoke(cli, ["inspect", str(path)])
        assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_enumerated_shapes_pass_and_a_range_dim_is_flagged(tmp_path):
    import coremltools as ct
    import torch

    class ConvSoftmax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return torch.softmax(self.conv(x), dim=1)

    traced = torch.jit.trace(ConvSoftmax().eval(), torch.randn(1, 8, 1, 16))
    shapes = {"enumerated": ct.EnumeratedShapes(shapes=[(1, 8, 1, 16), (1, 8, 1, 32)]),
              "range": (1, 8, 1, ct.RangeDim(1, 64, default=16))}
    flagged = {}
    for kind, shape in shapes.items():
        ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape)], convert_to="mlprogram",
                   minimum_deployment_target=ct.target.iOS16).save(str(tmp_path / f"{kind}.mlpackage"))
        flagged[kind] = [(row["type"], row["rule"]) for row in inspect_package(tmp_path / f"{kind}.mlpackage")["ane"]["ineligible"]]
    assert flagged == {"enumerated": [], "range": [("conv", "dynamic-shape"), ("softmax", "dynamic-shape")]}

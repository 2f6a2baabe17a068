"""What the conversion speed-ups must not change: the saved encoder (byte for byte without coremltools'
idle passes; op for op and output for output when traced in fp16), the fp32 reference (bit for bit when
it runs block by block) and the checkpoint's values (read memory-mapped)."""

from collections import Counter

import coremltools as ct
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import wconv
from wconv.cli import cli
from wconv.conversion import defaults
from wconv.job import Job
from wconv.layouts.contracts import cache_io_decoder, whispercpp_encoder, whisperkit_encoder
from wconv.plugins.openai_whisper.checkpoint import load_checkpoint
from wconv.runtime.evaluator import MLProgramEvaluator
from wconv.runtime.reference import LazyEncoder, whisper_model
from wconv.tools.random_checkpoints import write_random_checkpoint


@pytest.fixture(scope="module")
def tiny(module_tmp):
    """A tiny-dims fp16 checkpoint (zero and negative LayerNorm weights, like every random one), loaded."""
    path = write_random_checkpoint(module_tmp("lean") / "tiny.pt", "tiny", seed=5, fp16=True)
    return path, wconv.load_source(str(path), "openai")


def saved_bytes(mlmodel, path) -> dict[str, bytes]:
    """The program and weight files of a saved package (Manifest.json holds fresh UUIDs, so not it)."""
    mlmodel.save(str(path))
    return {file.name: file.read_bytes() for file in path.rglob("*") if file.is_file() and file.name != "Manifest.json"}


@pytest.mark.parametrize("contract", [
    whispercpp_encoder, whisperkit_encoder, lambda model: whispercpp_encoder(model, (1500, 3000)),
], ids=["whispercpp", "whisperkit", "enumerated-lengths"])
def test_idle_passes_change_no_byte_of_the_saved_encoder(tiny, tmp_path, monkeypatch, contract):
    _, model = tiny
    artifact = contract(model)
    job = Job(source="tiny.pt", output=tmp_path)
    traced = defaults.wconv_trace(model, artifact)
    lean = saved_bytes(defaults.wconv_convert(traced, artifact, job), tmp_path / "lean.mlpackage")
    monkeypatch.setattr(defaults, "encoder_pass_pipeline", lambda: ct.PassPipeline.DEFAULT)
    full = saved_bytes(defaults.wconv_convert(traced, artifact, job), tmp_path / "full.mlpackage")
    assert {"model.mlmodel", "weight.bin"} <= set(lean)
    assert lean == full
    assert len(defaults.encoder_pass_pipeline().passes) > len(defaults.IDLE_ENCODER_PASSES)


def program_facts(mlmodel, path, inputs: dict):
    """(op census, IO dtypes, outputs in wconv's evaluator) of a converted model, saved at ``path``."""
    mlmodel.save(str(path))
    spec = mlmodel.get_spec()
    census = Counter(op.type for function in spec.mlProgram.functions.values()
                     for block in function.block_specializations.values() for op in block.operations)
    io = [(f.name, f.type.multiArrayType.dataType) for f in [*spec.description.input, *spec.description.output]]
    return census, io, MLProgramEvaluator.load(path).predict(inputs)


@pytest.mark.parametrize("contract", [whispercpp_encoder, whisperkit_encoder, cache_io_decoder],
                         ids=["whispercpp", "whisperkit", "cache-io decoder"])
def test_fp16_traced_model_is_the_fp32_traced_one_cast_by_coremltools(tiny, tmp_path, monkeypatch, contract):
    _, model = tiny
    artifact = contract(model)
    job = Job(source="tiny.pt", output=tmp_path)
    traced = defaults.wconv_trace(model, artifact)
    assert not defaults.has_fp32_weights(traced)  # no fp32 copy of the weights anywhere
    rng = np.random.default_rng(0)
    inputs = {spec["name"]: np.zeros(spec["shape"], spec["dtype"]) if spec["dtype"] == "int32"
              else rng.standard_normal(spec["shape"]).astype(spec["dtype"]) for spec in artifact.inputs}
    fp16 = program_facts(defaults.wconv_convert(traced, artifact, job), tmp_path / "fp16.mlpackage", inputs)
    monkeypatch.setattr(defaults, "traced_dtype", lambda artifact: torch.float32)
    cast = program_facts(defaults.wconv_convert(defaults.wconv_trace(model, artifact), artifact, job), tmp_path / "cast.mlpackage", inputs)
    assert fp16[:2] == cast[:2]
    assert fp16[2].keys() == cast[2].keys() and all(np.array_equal(fp16[2][name], cast[2][name]) for name in fp16[2])


def test_block_by_block_reference_equals_the_whole_fp32_encoder(tiny):
    _, model = tiny
    mel = torch.randn(1, model.dims.n_mels, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = whisper_model(model.dims, model.state_dict).encoder(mel)
    assert torch.equal(LazyEncoder(model.dims, model.state_dict)(mel), whole)


@pytest.mark.parametrize("alignment_heads", [None, [(2, 1), (3, 5)]], ids=["default heads", "given heads"])
def test_reference_model_is_openai_whispers_own_with_the_weights_assigned(tiny, alignment_heads):
    """whisper_model builds on the meta device and assigns the fp32 weights: the same model openai-whisper builds
    and loads (every tensor, buffer and logit); without the encoder, the same decoder."""
    import whisper.model

    _, model = tiny
    built = whisper_model(model.dims, model.state_dict, alignment_heads)
    classic = whisper.model.Whisper(model.dims)
    classic.load_state_dict({k: v.float() for k, v in model.state_dict.items()})
    if alignment_heads:
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        mask[tuple(zip(*alignment_heads))] = True
        classic.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    ours, theirs = dict(built.named_buffers()), dict(classic.named_buffers())
    assert ours.keys() == theirs.keys() and {"decoder.mask", "alignment_heads"} <= ours.keys()
    assert all(torch.equal(ours[n].to_dense(), theirs[n].to_dense()) for n in ours)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), classic.eval().state_dict().values(), strict=True))
    tokens, mel = torch.tensor([[50258, 50259, 50359, 440]]), torch.randn(1, model.dims.n_mels, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built(mel, tokens), classic(mel, tokens))
        decoder_only = whisper_model(model.dims, model.state_dict, alignment_heads, encoder=False)
        features = classic.encoder(mel)
        assert not hasattr(decoder_only, "encoder") and decoder_only.device == torch.device("cpu")
        assert torch.equal(decoder_only.decoder(tokens, features), classic.decoder(tokens, features))


def test_mapped_checkpoint_holds_the_saved_values(tiny, tmp_path):
    path, _ = tiny
    _, state, _ = load_checkpoint(path)
    saved = torch.load(path, weights_only=True)["model_state_dict"]
    assert state.keys() == saved.keys()
    assert all(state[name].dtype == torch.float16 and torch.equal(state[name], saved[name]) for name in saved)
    legacy = tmp_path / "legacy.pt"  # torch's pre-1.6 format cannot be mapped: read whole
    dims = torch.load(path, weights_only=True)["dims"]
    torch.save({"dims": dims, "model_state_dict": saved}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy)[1]["encoder.conv1.weight"], saved["encoder.conv1.weight"])


def test_sample_checkpoint_fp16_stores_half_weights(tmp_path):
    result = CliRunner().invoke(cli, ["sample-checkpoint", str(tmp_path / "t.pt"), "--fp16"])
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "t.pt", weights_only=True)["model_state_dict"]
    assert {tensor.dtype for tensor in state.values()} == {torch.float16}

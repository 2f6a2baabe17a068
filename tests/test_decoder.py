"""The Core ML text decoders: ANE PyTorch vs openai-whisper, converted programs vs PyTorch through the
evaluator, WhisperKit's cache-io contract, the stateful program's states, and greedy transcription of
the speech clips with the real Whisper base weights."""

from collections import Counter
from dataclasses import dataclass

import coremltools as ct
import numpy as np
import pytest
import torch
import whisper
import whisper.model
from coremltools.converters.mil.frontend.milproto import load as milproto_load

from wconv.conversion.steps import build_decoder
from wconv.runtime.decoding import channels_first, decoder_steps, get_tokenizer, suppressed_tokens, transcribe_tokens
from wconv.runtime.evaluator import MLProgramEvaluator
from wconv.job import ArtifactKind, LoadedModel
from wconv.tools.random_checkpoints import random_state_dict, real_dims
from wconv.runtime.audio import read_wav
from wconv.verify.metrics import compare

from conftest import TorchPredictor, convert_decoder

VARIANTS = ("stateful", "cache-io")
ALIGNMENT_HEADS = [[1, 0], [2, 3], [3, 5]]
# sot, en, transcribe, notimestamps, then " The" and the last token of the vocabulary (last chunk)
TOKENS = [50258, 50259, 50359, 50363, 440, 51864]


def random_tiny_model() -> LoadedModel:
    """tiny dims, random weights; openai-whisper leaves the text positional embedding uninitialised, so draw it."""
    dims = real_dims("tiny")
    state = random_state_dict(dims, seed=1)
    generator = torch.Generator().manual_seed(2)
    state["decoder.positional_embedding"] = 0.1 * torch.randn(dims.n_text_ctx, dims.n_text_state, generator=generator)
    return LoadedModel(family="openai", name="tiny", dims=dims, state_dict=state, source="random", source_sha256="0" * 64,
                       alignment_heads=ALIGNMENT_HEADS)


def load_program(path):
    model = ct.models.MLModel(path, skip_model_load=True)
    spec = model.get_spec()
    program = milproto_load.load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)
    return spec, list(program.functions["main"].operations)


def io_contract(features) -> list[tuple]:
    names = {v: k for k, v in ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}
    return [(f.name, list(f.type.multiArrayType.shape), names[f.type.multiArrayType.dataType]) for f in features]


def largest_dimension(value) -> int:
    """The largest dimension of an op input: a variable, or a tuple of them (einsum)."""
    if isinstance(value, (list, tuple)):
        return max(map(largest_dimension, value))
    return max(value.shape, default=0)


def openai_reference(model: LoadedModel):
    reference = whisper.model.Whisper(model.dims).eval()
    reference.load_state_dict(model.state_dict)
    return reference


class Recording:
    """A predictor that keeps every prediction of the one it wraps."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.predictions = []

    def make_state(self):
        return self.predictor.make_state()

    def predict(self, inputs: dict, state=None) -> dict:
        self.predictions.append(self.predictor.predict(inputs, state=state))
        return self.predictions[-1]


@dataclass
class Expected:
    """openai-whisper's fp32 decoder on TOKENS: logits ``(T, n_vocab)`` and mean alignment-head weights ``(T, n_audio_ctx)``."""

    model: LoadedModel
    audio: np.ndarray  # encoder output (1, n_audio_ctx, D)
    logits: np.ndarray
    alignment: np.ndarray


@pytest.fixture(scope="module")
def tiny() -> Expected:
    model = random_tiny_model()
    reference = openai_reference(model)
    audio = torch.randn(1, model.dims.n_audio_ctx, model.dims.n_audio_state, generator=torch.Generator().manual_seed(3))
    scores = {}
    hooks = [block.cross_attn.register_forward_hook(lambda module, inputs, outputs, layer=layer: scores.update({layer: outputs[1]}))
             for layer, block in enumerate(reference.decoder.blocks)]
    with torch.no_grad(), whisper.model.disable_sdpa():
        logits = reference.decoder(torch.tensor([TOKENS]), audio)[0].numpy()
    for hook in hooks:
        hook.remove()
    alignment = torch.stack([scores[layer][0, head].softmax(-1) for layer, head in ALIGNMENT_HEADS]).mean(0).numpy()
    return Expected(model, audio.numpy(), logits, alignment)


@pytest.fixture(scope="module")
def tiny_decoders(module_tmp):
    """Both tiny decoders, converted and saved once for this module."""
    directory = module_tmp("tiny-decoders")
    model = random_tiny_model()
    return {variant: convert_decoder(model, variant, directory) for variant in VARIANTS}


def decode_steps(tiny: Expected, variant: str, predictor, dtype, text_context: int = 448) -> list[dict]:
    """Feed TOKENS one per step through the host steps; every prediction's outputs."""
    recording = Recording(predictor)
    step = decoder_steps(ArtifactKind.decoder(variant), recording, channels_first(tiny.audio).astype(dtype), tiny.model.dims, text_context)
    for position, token in enumerate(TOKENS):
        step(token, position)
    return recording.predictions


@pytest.mark.parametrize("variant", VARIANTS)
def test_pytorch_decoder_steps_equal_openai_decoder(tiny, variant):
    module = build_decoder(f"decoder-{variant}", tiny.model.dims, tiny.model.state_dict, tiny.model.alignment_heads)
    predictions = decode_steps(tiny, variant, TorchPredictor(module), np.float32)
    logits = np.concatenate([outputs["logits"].reshape(1, -1) for outputs in predictions])
    assert np.abs(logits - tiny.logits).max() <= 3e-6 * np.abs(tiny.logits).max()  # fp32 rounding: 3.3e-4 on logits up to 283


def test_pytorch_alignment_heads_weights_are_the_mean_cross_attention_of_those_heads(tiny):
    module = build_decoder("decoder-cache-io", tiny.model.dims, tiny.model.state_dict, tiny.model.alignment_heads)
    predictions = decode_steps(tiny, "cache-io", TorchPredictor(module), np.float32)
    alignment = np.concatenate([outputs["alignment_heads_weights"] for outputs in predictions])
    assert alignment.shape == (len(TOKENS), tiny.model.dims.n_audio_ctx)
    assert np.abs(alignment - tiny.alignment).max() <= 1e-6
    assert np.allclose(alignment.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_decoder_matches_pytorch_within_35_db(tiny, tiny_decoders, variant):
    predictions = decode_steps(tiny, variant, MLProgramEvaluator.load(tiny_decoders[variant]), np.float16)
    psnr = [compare(expected, outputs["logits"])["psnr"] for expected, outputs in zip(tiny.logits, predictions)]
    assert min(psnr) >= 35, psnr
    if variant == "cache-io":
        alignment = np.concatenate([outputs["alignment_heads_weights"] for outputs in predictions])
        assert compare(tiny.alignment, alignment)["psnr"] >= 35


def test_a_224_token_text_context_halves_the_cache_and_keeps_the_logits(tiny, tiny_decoders, tmp_path):
    """`--text-context 224` (WhisperKit never decodes past 224 tokens): caches and masks 224 long, the update mask int32
    as WhisperKit allocates it; the logits over TOKENS are the 448-long decoder's (later positions are masked in both)."""
    short = convert_decoder(tiny.model, "cache-io", tmp_path, text_context=224)
    spec, _ = load_program(short)
    inputs = {name: (shape, dtype) for name, shape, dtype in io_contract(spec.description.input)}
    assert inputs["key_cache"] == ([1, 1536, 1, 224], "FLOAT16") and inputs["kv_cache_update_mask"] == ([1, 224], "INT32")
    long_steps, short_steps = (decode_steps(tiny, "cache-io", MLProgramEvaluator.load(path), np.float16, context)
                               for path, context in ((tiny_decoders["cache-io"], 448), (short, 224)))
    for long_step, short_step in zip(long_steps, short_steps):
        assert compare(long_step["logits"], short_step["logits"])["psnr"] >= 60
        assert np.array_equal(long_step["key_cache_updates"], short_step["key_cache_updates"])


def test_stateful_program_keeps_the_cache_in_fp16_states_on_ios18(tiny_decoders):
    spec, operations = load_program(tiny_decoders["stateful"])
    dims = real_dims("tiny")
    assert spec.specificationVersion == ct._SPECIFICATION_VERSION_IOS_18
    states = [(s.name, list(s.type.stateType.arrayType.shape), s.type.stateType.arrayType.dataType) for s in spec.description.state]
    fp16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    assert states == [(f"{kind}_cache_{layer}", [1, 384, 1, 448], fp16) for layer in range(dims.n_text_layer) for kind in ("key", "value")]
    assert io_contract(spec.description.input) == [
        ("input_ids", [1], "INT32"), ("cache_length", [1], "INT32"), ("encoder_output_embeds", [1, 384, 1, 1500], "FLOAT16")]
    assert io_contract(spec.description.output) == [("logits", [1, 1, 51865], "FLOAT16")]
    kinds = Counter(op.op_type for op in operations)
    assert kinds["read_state"] == kinds["coreml_update_state"] == 2 * dims.n_text_layer
    assert kinds["split"] == 6 * dims.n_text_layer  # q, k, v of both attentions, each split per head once


def test_the_manifest_records_the_target_each_decoder_has(tiny_decoders):
    from wconv.manifest import describe_io, with_target

    def recorded(variant, requested):
        return with_target({"file": variant, **describe_io(tiny_decoders[variant])}, requested)["min_target"]

    assert recorded("stateful", "iOS16") == "iOS18" and recorded("stateful", "macOS13") == "macOS15"
    assert recorded("cache-io", "iOS16") == "iOS16"


@pytest.mark.parametrize("variant", VARIANTS)
def test_program_has_no_dimension_above_16384_and_stores_the_token_table_once(tiny_decoders, variant):
    _, operations = load_program(tiny_decoders[variant])
    kinds = Counter(op.op_type for op in operations)
    assert kinds["linear"] == kinds["matmul"] == 0
    assert kinds["conv"] == 4 * 10 + 4  # q,k,v,out of both attentions and fc1,fc2 per layer; 4 vocabulary chunks
    for op in operations:
        if op.op_type in ("conv", "einsum", "softmax", "gather", "layer_norm", "batch_norm", "gelu"):
            assert max(largest_dimension(value) for value in op.inputs.values()) <= 16384, op.name
    dims = real_dims("tiny")
    token_tables = {op.inputs["x"].name for op in operations if op.op_type == "gather" and op.inputs["x"].shape[0] != dims.n_text_ctx}
    vocabulary_kernels = {op.inputs["weight"].name for op in operations if op.op_type == "conv" and op.outputs[0].shape[1] > 4 * dims.n_text_state}
    assert len(token_tables) == 4 and token_tables == vocabulary_kernels


def test_cache_io_decoder_is_whisperkits_textdecoder_contract(base_artifacts):
    spec, _ = load_program(base_artifacts["cache-io"])
    assert spec.specificationVersion == ct._SPECIFICATION_VERSION_IOS_16
    assert io_contract(spec.description.input) == [
        ("input_ids", [1], "INT32"),
        ("cache_length", [1], "INT32"),
        ("key_cache", [1, 3072, 1, 448], "FLOAT16"),
        ("value_cache", [1, 3072, 1, 448], "FLOAT16"),
        ("kv_cache_update_mask", [1, 448], "INT32"),
        ("encoder_output_embeds", [1, 512, 1, 1500], "FLOAT16"),
        ("decoder_key_padding_mask", [1, 448], "FLOAT16"),
    ]
    assert io_contract(spec.description.output) == [
        ("logits", [1, 1, 51865], "FLOAT16"),
        ("key_cache_updates", [1, 3072, 1, 1], "FLOAT16"),
        ("value_cache_updates", [1, 3072, 1, 1], "FLOAT16"),
        ("alignment_heads_weights", [1, 1500], "FLOAT16"),
    ]
    assert not spec.description.state


@pytest.fixture(scope="session")
def clip_transcriptions(base_artifacts, base_model, openai_base_model, speech_clips):
    """Per clip: the converted encoder's output (evaluator, fp16) and openai-whisper's fp32 greedy tokens."""
    encoder = MLProgramEvaluator.load(base_artifacts["encoder"])
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    transcriptions = []
    for clip in speech_clips:
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(read_wav(clip)))
        reference = whisper.decode(openai_base_model, mel, options)
        encoder_output = encoder.predict({"logmel_data": mel.numpy()[None]})["output"]
        transcriptions.append((clip.name, np.asarray(encoder_output, dtype=np.float32), reference.tokens))
    return transcriptions


def test_host_prompt_and_suppression_are_openai_whisper_decoding_tasks(base_model, openai_base_model):
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    task = whisper.decoding.DecodingTask(openai_base_model, options)
    tokenizer = get_tokenizer(base_model.dims, base_model.multilingual)
    assert tokenizer.sot_sequence_including_notimestamps == task.initial_tokens == (50258, 50259, 50359, 50363)
    assert suppressed_tokens(tokenizer) == list(task._get_suppress_tokens())
    blank = next(f for f in task.logit_filters if isinstance(f, whisper.decoding.SuppressBlank))
    assert blank.sample_begin == len(task.initial_tokens)
    assert [type(f).__name__ for f in task.logit_filters] == ["SuppressBlank", "SuppressTokens"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_encoder_and_decoder_transcribe_the_clips_like_openai_whisper(clip_transcriptions, base_artifacts, base_model, variant):
    tokenizer = get_tokenizer(base_model.dims, base_model.multilingual)
    for clip, encoder_output, expected in clip_transcriptions:
        tokens = transcribe_tokens(encoder_output, base_artifacts[variant], ArtifactKind.decoder(variant), base_model.dims, base_model.multilingual)
        assert tokens == expected, f"{clip}: {tokenizer.decode(tokens)!r} != {tokenizer.decode(expected)!r}"
        assert len(tokens) >= 8

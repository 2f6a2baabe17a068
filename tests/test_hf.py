"""The Hugging Face Transformers family: loading, the name mapping, artifact names and errors.

Every model is built locally (``WhisperConfig`` + ``save_pretrained``); nothing touches the hub.
"""

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
import whisper
import whisper.model
from click.testing import CliRunner
from conftest import text_tokens
from transformers import BertConfig, WhisperConfig, WhisperForConditionalGeneration

from wconv import InputError, Job
from wconv.cli import cli
from wconv.files import sha256_file
from wconv.plugins import hf_whisper
from wconv.plugins.hf_whisper.checkpoint import artifact_name, looks_like_hub_id, read_checkpoint, repo_id_of, resolve_source
from wconv.plugins.hf_whisper.export import save_hf_whisper
from wconv.plugins.hf_whisper.mapping import canonical_to_hf, hf_to_canonical
from wconv.runtime.audio import read_wav
from wconv.runtime.run import run_artifact
from wconv.verify.metrics import compare

TINY = dict(d_model=384, encoder_attention_heads=6, decoder_attention_heads=6, encoder_layers=4, decoder_layers=4,
            encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80, vocab_size=51865)
TURBO_LIKE = dict(TINY, encoder_layers=6, decoder_layers=4, num_mel_bins=128, vocab_size=51870)
MINI = dict(d_model=64, encoder_attention_heads=2, decoder_attention_heads=2, encoder_layers=1, decoder_layers=1,
            encoder_ffn_dim=256, decoder_ffn_dim=256)
ALIGNMENT_HEADS = [[2, 1], [3, 4]]

# (config, directory name, --name option, expected artifact)
CONVERSIONS = {
    "tiny": (TINY, "Whisper Tiny+HF", None, "ggml-whisper-tiny-hf-encoder.mlpackage"),
    "turbo-like": (TURBO_LIKE, "turbo-like", "small-turbo", "ggml-small-turbo-encoder.mlpackage"),
}


def invoke(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(arg) for arg in args])


def randomize_layer_norms(model, seed=0):
    """LayerNorm affines far from (1, 0): some weights exactly zero, some negative."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                weight = torch.randn(module.weight.shape, generator=generator) * 0.5 + 1.0
                weight[::7] = 0.0
                weight[1::7] = -weight[1::7].abs()
                module.weight.copy_(weight)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5)


def save_whisper(directory, seed=0, alignment_heads=None, **config):
    """A random WhisperForConditionalGeneration with non-trivial LayerNorms, saved as safetensors."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**config)).eval()
    randomize_layer_norms(model, seed)
    if alignment_heads:
        model.generation_config.alignment_heads = alignment_heads
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=sorted(CONVERSIONS))
def converted(request, module_tmp):
    """One random model per config, converted once with `wconv run --family hf` (no verify), and
    Transformers' own fp32 encoder output on a seeded mel."""
    config, dirname, name, artifact = CONVERSIONS[request.param]
    root = module_tmp(request.param)
    directory = root / dirname
    save_whisper(directory, seed=len(dirname), alignment_heads=ALIGNMENT_HEADS, **config)
    result = invoke("run", "--family", "hf", directory, "-o", root / "out", "--no-verify", *(["--name", name] if name else []))
    assert result.exit_code == 0, result.output
    mel = torch.randn(1, config["num_mel_bins"], 3000, generator=torch.Generator().manual_seed(1))
    hf_model = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf_model.model.encoder(mel).last_hidden_state
    return SimpleNamespace(config=config, directory=directory, package=root / "out" / artifact, mel=mel, expected=expected)


def test_converted_encoder_matches_the_transformers_encoder(converted):
    assert converted.package.is_dir()
    outputs, _ = run_artifact(converted.package, {"logmel_data": converted.mel.numpy()})
    metrics = compare(converted.expected.numpy(), outputs["output"])
    print(f"{converted.package.name}: {metrics}")
    assert outputs["output"].shape == (1, 1500, 384)
    assert metrics["psnr"] >= 50.0


def test_canonical_weights_load_strictly_into_openai_whisper_and_compute_the_same_encoder(converted):
    config = converted.config
    model = hf_whisper.wconv_load(job=Job(source=str(converted.directory), family="hf"))
    dims = model.dims
    assert (dims.n_mels, dims.n_vocab, dims.n_audio_layer, dims.n_text_layer) == (
        config["num_mel_bins"], config["vocab_size"], config["encoder_layers"], config["decoder_layers"])
    assert (dims.n_audio_state, dims.n_audio_head, dims.n_audio_ctx, dims.n_text_ctx) == (384, 6, 1500, 448)
    assert model.multilingual and model.alignment_heads == ALIGNMENT_HEADS

    openai_model = whisper.model.Whisper(dims).eval()
    openai_model.load_state_dict(model.state_dict, strict=True)
    with torch.no_grad():
        assert (openai_model.encoder(converted.mel) - converted.expected).abs().max().item() <= 1e-4
        assert torch.equal(model.reference_encoder(converted.mel), converted.expected)


def test_name_table_is_its_own_inverse_and_covers_openai_whisper():
    hf_state = WhisperForConditionalGeneration(WhisperConfig(**MINI)).state_dict()
    canonical, unmatched = hf_to_canonical(hf_state)
    assert unmatched == ["proj_out.weight"]
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                                         n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    assert set(canonical) == set(whisper.model.Whisper(dims).state_dict())
    back, unmatched = canonical_to_hf(canonical)
    assert not unmatched and set(back) == set(hf_state) - {"proj_out.weight"}
    assert all(back[name] is hf_state[name] for name in back)


@pytest.mark.parametrize("repo_id, name", [
    ("openai/whisper-small", "small"),
    ("openai/whisper-large-v3-turbo", "large-v3-turbo"),
    ("OpenAI/Whisper-Tiny.en", "tiny.en"),
    ("someone/whisper-small-de", "whisper-small-de"),
    ("someone/openai-whisper-base", "openai-whisper-base"),
    ("whisper-small", "whisper-small"),
    ("My Model (v2)+fr", "my-model--v2--fr"),
])
def test_artifact_name_rule(repo_id, name):
    assert artifact_name(repo_id) == name


def test_a_snapshot_in_the_hub_cache_is_named_after_its_hub_id(tmp_path):
    snapshot = tmp_path / "models--openai--whisper-base.en" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert artifact_name(repo_id_of(snapshot)) == "base.en"
    assert repo_id_of(tmp_path / "models--openai--whisper-base.en") == "models--openai--whisper-base.en"


@pytest.mark.parametrize("source, expected", [
    ("openai/whisper-small", True), ("distil-whisper/distil-large-v3.5", True), ("models/tiny.pt", False),
    ("models/ggml-base.bin", False), ("small", False), ("./a/b", False), ("a/b/c", False),
])
def test_hub_ids_look_like_org_slash_name(source, expected):
    assert looks_like_hub_id(source) is expected


@pytest.fixture
def not_whisper_dirs(tmp_path):
    """A BERT model directory, a directory without config.json and a .pt file."""
    bert = tmp_path / "bert-tiny"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(bert)
    empty = tmp_path / "no-config"
    empty.mkdir()
    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(b"not ours")
    return {"bert": bert, "no-config": empty, "pt-file": checkpoint}


@pytest.mark.parametrize("kind", ["bert", "no-config", "pt-file"])
def test_without_family_other_sources_are_left_to_other_families(not_whisper_dirs, kind):
    assert resolve_source(str(not_whisper_dirs[kind]), explicit=False) is None


@pytest.mark.parametrize("kind, says", [("bert", "model_type 'bert'"), ("no-config", "has no config.json")])
def test_family_hf_on_a_non_whisper_directory_fails_in_one_line_and_writes_nothing(not_whisper_dirs, tmp_path, kind, says):
    out = tmp_path / "out"
    result = invoke("run", "--family", "hf", not_whisper_dirs[kind], "-o", out)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert str(not_whisper_dirs[kind]) in result.stderr and says in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("family", [["--family", "hf"], ["--family", "transformers"], []])
def test_offline_with_an_uncached_hub_id_fails_in_one_line(tmp_path, family):
    out = tmp_path / "out"
    result = invoke("run", *family, "someone/whisper-nothing", "-o", out, env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "'someone/whisper-nothing' is not in the local cache and HF_HUB_OFFLINE is set" in result.stderr
    assert not out.exists()


def test_a_cached_hub_model_loads_offline_and_is_named_by_the_rule(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--openai--whisper-mini"
    save_whisper(repo / "snapshots" / commit, alignment_heads=[[0, 1]], **MINI)
    (repo / "snapshots" / commit / "tokenizer.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    model = hf_whisper.wconv_load(job=Job(source="openai/whisper-mini"))
    assert (model.family, model.name, model.alignment_heads) == ("hf", "mini", [[0, 1]])
    assert model.source == str(repo / "snapshots" / commit)
    assert model.tokenizer_json == repo / "snapshots" / commit / "tokenizer.json"
    assert model.source_sha256 == sha256_file(repo / "snapshots" / commit / "model.safetensors")


def test_an_untied_output_head_is_refused(tmp_path):
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**MINI, tie_word_embeddings=False))
    assert not torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)
    model.save_pretrained(tmp_path / "untied")
    with pytest.raises(InputError, match="proj_out.weight differs from model.decoder.embed_tokens.weight"):
        read_checkpoint(tmp_path / "untied")


def test_sharded_safetensors_and_pytorch_bin_read_like_one_safetensors_file(tmp_path):
    model = save_whisper(tmp_path / "single", **MINI)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    bin_dir = tmp_path / "bin"
    model.config.save_pretrained(bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")

    single = read_checkpoint(tmp_path / "single")
    assert single.sha256 == sha256_file(tmp_path / "single" / "model.safetensors")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    sharded = read_checkpoint(tmp_path / "sharded")
    assert sharded.sha256 == hashlib.sha256("".join(sha256_file(p) for p in shards).encode()).hexdigest()
    from_bin = read_checkpoint(bin_dir)
    assert from_bin.sha256 == sha256_file(bin_dir / "pytorch_model.bin")
    for other in (sharded, from_bin):
        assert other.state_dict.keys() == single.state_dict.keys()
        assert all(torch.equal(other.state_dict[k], v) for k, v in single.state_dict.items())


def test_unsupported_architecture_settings_are_refused(tmp_path):
    save_whisper(tmp_path / "relu", activation_function="relu", **MINI)
    with pytest.raises(InputError, match="activation_function='relu'"):
        read_checkpoint(tmp_path / "relu")


# --- real weights: the CT2 base model written as an HF directory ----------------------------------

@pytest.fixture(scope="module")
def hf_base_dir(ct2_base, module_tmp):
    """The real multilingual base weights as a Transformers directory (config and generation config)."""
    return save_hf_whisper(
        module_tmp("hf-base") / "whisper-base", ct2_base.dims, ct2_base.state_dict,
        alignment_heads=ct2_base.alignment_heads,
        suppress_tokens=ct2_base.config["suppress_ids"], begin_suppress_tokens=ct2_base.config["suppress_ids_begin"],
    )


def test_hf_base_dir_loads_back_as_the_same_canonical_weights(hf_base_dir, ct2_base):
    loaded = read_checkpoint(hf_base_dir)
    assert loaded.dims == ct2_base.dims and loaded.alignment_heads == ct2_base.alignment_heads
    assert loaded.state_dict.keys() == ct2_base.state_dict.keys()
    assert all(torch.equal(loaded.state_dict[k], v.float()) for k, v in ct2_base.state_dict.items())
    config = json.loads((hf_base_dir / "config.json").read_text())
    token_ids = [config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")]
    assert token_ids == [50257, 50257, 50257, 50258]


@pytest.fixture(scope="module")
def hf_generated(hf_base_dir, speech_clips):
    """Transformers' greedy generate() tokens (no timestamps) for each clip."""
    hf_model = WhisperForConditionalGeneration.from_pretrained(hf_base_dir, dtype=torch.float32).eval()
    eot = 50257
    tokens = {}
    for clip in speech_clips:
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(read_wav(clip)))
        with torch.no_grad():
            generated = hf_model.generate(mel[None], language="en", task="transcribe", return_timestamps=False)
        tokens[clip.name] = [t for t in generated[0].tolist() if t < eot]
    return tokens


def test_transformers_generate_gives_openai_whisper_tokens_on_real_base_weights(hf_generated, openai_base_model, speech_clips):
    for clip in speech_clips:
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(read_wav(clip)))
        options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
        expected = whisper.decode(openai_base_model, mel, options)
        assert expected.tokens and hf_generated[clip.name] == list(expected.tokens), clip.name


def test_run_family_hf_then_transcribe_gives_transformers_tokens(hf_base_dir, hf_generated, speech_clips, tmp_path):
    from wconv.tools.transcribe import transcribe

    result = CliRunner().invoke(cli, ["run", "--family", "hf", str(hf_base_dir), "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ggml-whisper-base-encoder.mlpackage").is_dir() and (tmp_path / "ggml-whisper-base.bin").is_file()
    for clip in speech_clips:
        assert text_tokens(transcribe(tmp_path, clip, language="en")["tokens"]) == hf_generated[clip.name], clip.name

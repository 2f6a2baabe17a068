"""openai-whisper family: official model names (downloaded with openai-whisper's own cache) or a
local ``.pt`` checkpoint in openai's format (a dict with ``dims`` and ``model_state_dict``)."""

from __future__ import annotations


import wconv

from .checkpoint import OFFICIAL_MODELS, hub_repo_id_of_official, load_checkpoint, official_alignment_heads, resolve_checkpoint

ALIASES = ("openai-whisper", "whisper")
KNOWN_MODELS = OFFICIAL_MODELS
DESCRIPTION = "openai-whisper checkpoints: official names or a local .pt"


@wconv.hookimpl
def wconv_load(job):
    path, name = resolve_checkpoint(job.source, explicit=job.family is not None)
    if path is None:
        return None
    dims, state_dict, sha256 = load_checkpoint(path)
    return wconv.LoadedModel(
        family="openai",
        name=name,
        dims=dims,
        state_dict=state_dict,
        source=str(path.resolve()),
        source_sha256=sha256,
        reference_encoder=wconv.LazyEncoder(dims, state_dict),
        multilingual=dims.n_vocab >= 51865,
        alignment_heads=official_alignment_heads(name, dims),
        repo_id=hub_repo_id_of_official(job.source),
    )


@wconv.hookimpl
def wconv_patch(model):
    # openai-whisper's SDPA path does not trace through coremltools; the manual path does.
    import whisper.model

    whisper.model.MultiHeadAttention.use_sdpa = False

"""Hugging Face Transformers family: ``WhisperForConditionalGeneration`` from a hub id (through
huggingface_hub's cache; ``HF_HUB_OFFLINE=1`` uses the cache only) or a local directory written by
``save_pretrained`` (config.json plus model.safetensors, or pytorch_model.bin).

Artifact name rule: take the hub id (``org/name``) or the directory name. If the org is ``openai``,
drop a leading ``whisper-`` from the name. Lowercase the result and replace every character outside
``[a-z0-9._-]`` with ``-``. Examples: ``openai/whisper-small`` -> ``small``
(``ggml-small-encoder``); ``someone/whisper-small-de`` -> ``whisper-small-de``
(``ggml-whisper-small-de-encoder``); a directory ``My Model`` -> ``my-model``. A snapshot directory
in HF's cache (``models--org--name/snapshots/<commit>``) is named after its hub id. ``--name``
overrides the rule.
"""

from __future__ import annotations

import wconv

from .checkpoint import HFReferenceEncoder, read_checkpoint, resolve_source

ALIASES = ("transformers", "huggingface")
KNOWN_MODELS = tuple(f"openai/whisper-{size}" for size in (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large", "large-v2", "large-v3", "large-v3-turbo",
))
DESCRIPTION = "Hugging Face Transformers Whisper: a hub id (org/name) or a save_pretrained directory"


@wconv.hookimpl
def wconv_load(job):
    located = resolve_source(job.source, explicit=job.family is not None)
    if located is None:
        return None
    directory, name = located
    checkpoint = read_checkpoint(directory)
    return wconv.LoadedModel(
        family="hf",
        name=name,
        dims=checkpoint.dims,
        state_dict=checkpoint.state_dict,
        source=str(directory),
        source_sha256=checkpoint.sha256,
        reference_encoder=HFReferenceEncoder(checkpoint.config, checkpoint.encoder_state),
        multilingual=checkpoint.dims.n_vocab >= 51865,
        alignment_heads=checkpoint.alignment_heads,
        repo_id=wconv.hub_repo_id(directory),
        tokenizer_json=checkpoint.tokenizer_json,
    )

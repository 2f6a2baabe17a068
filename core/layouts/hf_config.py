"""openai-whisper dimensions and tokenizer <-> Hugging Face Transformers' ``WhisperConfig`` and
``GenerationConfig``: one field table both ways, and config files generated for models that have none."""

from __future__ import annotations

from pathlib import Path

# openai-whisper ModelDimensions field -> WhisperConfig field (d_model serves both sides)
CONFIG_FIELDS = (
    ("n_mels", "num_mel_bins"), ("n_audio_ctx", "max_source_positions"), ("n_audio_state", "d_model"),
    ("n_audio_head", "encoder_attention_heads"), ("n_audio_layer", "encoder_layers"), ("n_vocab", "vocab_size"),
    ("n_text_ctx", "max_target_positions"), ("n_text_state", "d_model"), ("n_text_head", "decoder_attention_heads"),
    ("n_text_layer", "decoder_layers"),
)
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper's max_initial_timestamp of 1 s, in 20 ms steps


def dims_from_config(config):
    """openai-whisper ``ModelDimensions`` of an HF ``WhisperConfig``."""
    from whisper.model import ModelDimensions

    return ModelDimensions(**{dim: getattr(config, key) for dim, key in CONFIG_FIELDS})


def config_from_dims(dims, **settings):
    """The HF ``WhisperConfig`` with ``dims`` (inverse of :func:`dims_from_config`) plus ``settings``."""
    from transformers import WhisperConfig

    fields = {key: getattr(dims, dim) for dim, key in CONFIG_FIELDS}
    return WhisperConfig(**fields, encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state, **settings)


def write_hf_configs(directory: Path, dims, multilingual: bool, alignment_heads: list | None = None,
                     suppress_tokens=None, begin_suppress_tokens=None) -> list[Path]:
    """Write ``config.json`` and ``generation_config.json`` for a model of ``dims``; returns their paths.

    Token ids (start, end, tasks, languages, no-timestamps) come from openai-whisper's tokenizer.
    ``suppress_tokens`` defaults to openai-whisper's ``suppress_tokens="-1"`` set and
    ``begin_suppress_tokens`` to blank and end-of-text, as openai's own models publish them.
    """
    from transformers import GenerationConfig

    from ..runtime.decoding import get_tokenizer, suppressed_tokens

    tokenizer = get_tokenizer(dims, multilingual)
    token_settings = {
        "bos_token_id": tokenizer.eot, "eos_token_id": tokenizer.eot, "pad_token_id": tokenizer.eot,
        "decoder_start_token_id": tokenizer.sot,
        "suppress_tokens": list(suppressed_tokens(tokenizer) if suppress_tokens is None else suppress_tokens),
        "begin_suppress_tokens": list(tokenizer.encode(" ") + [tokenizer.eot] if begin_suppress_tokens is None
                                      else begin_suppress_tokens),
    }
    generation = GenerationConfig(
        **token_settings,
        alignment_heads=[[int(layer), int(head)] for layer, head in alignment_heads or []],
        lang_to_id={f"<|{code}|>": token for code, token in zip(tokenizer.all_language_codes, tokenizer.all_language_tokens)},
        task_to_id={"transcribe": tokenizer.transcribe, "translate": tokenizer.translate},
        is_multilingual=multilingual,
        no_timestamps_token_id=tokenizer.no_timestamps,
        prev_sot_token_id=tokenizer.sot_prev,
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        max_length=dims.n_text_ctx,
    )
    directory = Path(directory)
    config_from_dims(dims, architectures=["WhisperForConditionalGeneration"], **token_settings).save_pretrained(directory)
    generation.save_pretrained(directory)
    return [directory / "config.json", directory / "generation_config.json"]

"""Write canonical (openai-named) Whisper weights as a Hugging Face Transformers model directory.

The inverse of this family's loader, through the same rule table. Tests and comparisons use it to
give Transformers' ``from_pretrained`` / ``generate()`` the very weights openai-whisper runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .mapping import canonical_to_hf, config_from_dims


def special_token_ids(dims) -> dict:
    """Special-token ids and language ids of openai-whisper's tokenizer for an official vocabulary size."""
    from whisper.tokenizer import get_tokenizer

    multilingual = dims.n_vocab >= 51865
    tokenizer = get_tokenizer(multilingual, num_languages=dims.n_vocab - 51765 - int(multilingual))
    return {
        "multilingual": multilingual,
        "eot": tokenizer.eot,
        "sot": tokenizer.sot,
        "sot_prev": tokenizer.sot_prev,
        "no_timestamps": tokenizer.no_timestamps,
        "tasks": {"transcribe": tokenizer.transcribe, "translate": tokenizer.translate},
        "languages": {f"<|{code}|>": token for code, token in zip(tokenizer.all_language_codes, tokenizer.all_language_tokens)},
    }


def save_hf_whisper(directory: Path, dims, state_dict: dict, alignment_heads: list | None = None,
                    suppress_tokens=(), begin_suppress_tokens=()) -> Path:
    """Write config.json, generation_config.json and model.safetensors (fp32) for ``generate()``.

    Token ids come from openai-whisper's tokenizer; ``suppress_tokens`` and
    ``begin_suppress_tokens`` are the lists the model's own config gives (e.g. CT2's config.json).
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    hf_state, unmatched = canonical_to_hf(state_dict)
    if unmatched:
        raise ValueError(f"no HF name for {', '.join(unmatched[:3])}")
    ids = special_token_ids(dims)
    token_settings = {
        "bos_token_id": ids["eot"], "eos_token_id": ids["eot"], "pad_token_id": ids["eot"],
        "decoder_start_token_id": ids["sot"],
        "suppress_tokens": list(suppress_tokens), "begin_suppress_tokens": list(begin_suppress_tokens),
    }
    generation = GenerationConfig(
        **token_settings,
        alignment_heads=[list(pair) for pair in alignment_heads or []],
        lang_to_id=ids["languages"],
        task_to_id=ids["tasks"],
        is_multilingual=ids["multilingual"],
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["sot_prev"],
        max_initial_timestamp_index=50,
        max_length=dims.n_text_ctx,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_from_dims(dims, **token_settings).save_pretrained(directory)
    generation.save_pretrained(directory)
    # own contiguous fp32 copies: safetensors refuses views that share storage (e.g. split fused QKV)
    weights = {name: torch.as_tensor(tensor).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
               for name, tensor in hf_state.items()}
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory

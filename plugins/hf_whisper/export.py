"""Write canonical (openai-named) Whisper weights as a Hugging Face Transformers model directory.

The inverse of this family's loader, through the same rule table. Tests and comparisons use it to
give Transformers' ``from_pretrained`` / ``generate()`` the very weights openai-whisper runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wconv import write_hf_configs

from .mapping import canonical_to_hf


def save_hf_whisper(directory: Path, dims, state_dict: dict, alignment_heads: list | None = None,
                    suppress_tokens=None, begin_suppress_tokens=None) -> Path:
    """Write config.json, generation_config.json and model.safetensors (fp32) for ``generate()``.

    Token ids come from openai-whisper's tokenizer; ``suppress_tokens`` and
    ``begin_suppress_tokens`` are the lists the model's own config gives (e.g. CT2's config.json),
    openai-whisper's defaults when None.
    """
    from safetensors.torch import save_file

    hf_state, unmatched = canonical_to_hf(state_dict)
    if unmatched:
        raise ValueError(f"no HF name for {', '.join(unmatched[:3])}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_hf_configs(directory, dims, dims.n_vocab >= 51865, alignment_heads, suppress_tokens, begin_suppress_tokens)
    # own contiguous fp32 copies: safetensors refuses views that share storage (e.g. split fused QKV)
    weights = {name: torch.as_tensor(tensor).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
               for name, tensor in hf_state.items()}
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory

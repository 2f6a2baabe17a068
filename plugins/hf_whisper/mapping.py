"""Hugging Face Transformers' Whisper <-> openai-whisper (canonical): tensor names and supported settings
(the dimensions table is core's, :mod:`wconv.hf_config`).

Names go through one two-way rule table, :data:`NAME_RULES`. Each rule pairs an HF name template
with an openai one; ``{side}``, ``{layer}``, ``{param}`` and ``{conv}`` stand for the parts that
vary. HF's ``proj_out.weight`` is not in the table: Whisper ties it to the token embedding.
"""

from __future__ import annotations

import re

TIED_HEAD = "proj_out.weight"
TOKEN_EMBEDDING = "model.decoder.embed_tokens.weight"

PLACEHOLDERS = {"side": "encoder|decoder", "layer": r"\d+", "param": "weight|bias", "conv": "1|2"}

MODEL_RULES = (
    ("model.encoder.conv{conv}.{param}", "encoder.conv{conv}.{param}"),
    ("model.encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("model.encoder.layer_norm.{param}", "encoder.ln_post.{param}"),
    (TOKEN_EMBEDDING, "decoder.token_embedding.weight"),
    ("model.decoder.embed_positions.weight", "decoder.positional_embedding"),
    ("model.decoder.layer_norm.{param}", "decoder.ln.{param}"),
)

LAYER_RULES = (  # inside model.{side}.layers.{layer} (HF) and {side}.blocks.{layer} (openai)
    ("self_attn.q_proj.{param}", "attn.query.{param}"),
    ("self_attn.k_proj.weight", "attn.key.weight"),  # Whisper's key projections have no bias
    ("self_attn.v_proj.{param}", "attn.value.{param}"),
    ("self_attn.out_proj.{param}", "attn.out.{param}"),
    ("self_attn_layer_norm.{param}", "attn_ln.{param}"),
    ("encoder_attn.q_proj.{param}", "cross_attn.query.{param}"),
    ("encoder_attn.k_proj.weight", "cross_attn.key.weight"),
    ("encoder_attn.v_proj.{param}", "cross_attn.value.{param}"),
    ("encoder_attn.out_proj.{param}", "cross_attn.out.{param}"),
    ("encoder_attn_layer_norm.{param}", "cross_attn_ln.{param}"),
    ("fc1.{param}", "mlp.0.{param}"),
    ("fc2.{param}", "mlp.2.{param}"),
    ("final_layer_norm.{param}", "mlp_ln.{param}"),
)

NAME_RULES = MODEL_RULES + tuple(
    (f"model.{{side}}.layers.{{layer}}.{hf}", f"{{side}}.blocks.{{layer}}.{openai}") for hf, openai in LAYER_RULES
)


def compile_template(template: str) -> re.Pattern:
    """A regex matching ``template`` with each ``{placeholder}`` as a named group."""
    pieces = re.split(r"\{(\w+)\}", template)  # literal text at even positions, placeholder names at odd
    return re.compile("".join(
        re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>{PLACEHOLDERS[piece]})" for i, piece in enumerate(pieces)
    ))


HF_TO_OPENAI = [(compile_template(hf), openai) for hf, openai in NAME_RULES]
OPENAI_TO_HF = [(compile_template(openai), hf) for hf, openai in NAME_RULES]


def rename(state_dict: dict, rules) -> tuple[dict, list[str]]:
    """(the tensors under their new names, the names no rule matches). Tensors are not copied."""
    renamed, unmatched = {}, []
    for name, tensor in state_dict.items():
        for pattern, target in rules:
            if match := pattern.fullmatch(name):
                renamed[target.format(**match.groupdict())] = tensor
                break
        else:
            unmatched.append(name)
    return renamed, unmatched


def hf_to_canonical(hf_state: dict) -> tuple[dict, list[str]]:
    """openai names for an HF ``WhisperForConditionalGeneration`` state dict without ``proj_out``."""
    return rename(hf_state, HF_TO_OPENAI)


def canonical_to_hf(state_dict: dict) -> tuple[dict, list[str]]:
    """HF names for a canonical state dict (``proj_out`` left out: HF ties it when loading)."""
    return rename(state_dict, OPENAI_TO_HF)


def unsupported_settings(config) -> list[str]:
    """Settings of an HF ``WhisperConfig`` that openai-whisper's (and the ANE) architecture cannot express."""
    expected = {
        "encoder_ffn_dim": 4 * config.d_model,
        "decoder_ffn_dim": 4 * config.d_model,
        "activation_function": "gelu",
        "scale_embedding": False,
    }
    return [f"{key}={getattr(config, key)!r} (expected {value!r})"
            for key, value in expected.items() if getattr(config, key) != value]

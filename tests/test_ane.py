"""The shared ANE modules equal openai-whisper's PyTorch modules on the same weights."""

import pytest
import torch
import whisper.model

from wconv.conversion import ane
from wconv.errors import ConversionError
from wconv.tools.random_checkpoints import random_state_dict, real_dims


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_ane_encoder_matches_openai_encoder_with_zero_and_negative_layernorm_weights(size):
    dims = real_dims(size)
    state = random_state_dict(dims, seed=3)
    layer_norm_weights = torch.cat([v for k, v in state.items() if k.startswith("encoder.") and "ln" in k and k.endswith("weight")])
    assert (layer_norm_weights == 0).any() and (layer_norm_weights < 0).any()

    reference = whisper.model.Whisper(dims).eval()
    reference.load_state_dict(state)
    whisper.model.MultiHeadAttention.use_sdpa = False
    encoder = ane.build_encoder(dims, state)
    mel = torch.randn(1, dims.n_mels, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.encoder(mel)
        actual = encoder(mel)
    assert actual.shape == (1, 1500, dims.n_audio_state)
    assert (actual - expected).abs().max().item() <= 1e-4


def test_channel_layer_norm_equals_torch_layer_norm_for_any_affine():
    norm = ane.ChannelLayerNorm(16)
    reference = torch.nn.LayerNorm(16)
    with torch.no_grad():
        weight = torch.randn(16)
        weight[:4] = 0.0
        weight[4:8] = -weight[4:8].abs()
        for module in (norm, reference):
            module.weight.copy_(weight)
            module.bias.copy_(torch.randn(16, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(2, 16, 1, 7)
    expected = reference(x.squeeze(2).transpose(1, 2)).transpose(1, 2).unsqueeze(2)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_load_canonical_names_the_missing_tensor():
    dims = real_dims("tiny")
    state = random_state_dict(dims)
    del state["encoder.blocks.0.attn.query.weight"]
    with pytest.raises(Exception, match="blocks.0.attn.query.weight"):
        ane.build_encoder(dims, state)


def test_fp16_encoder_uses_fp16_weights_in_place_and_refuses_values_fp16_cannot_hold():
    dims = real_dims("tiny")
    state = {name: tensor.half() for name, tensor in random_state_dict(dims).items()}
    encoder = ane.build_encoder(dims, state, dtype=torch.float16)
    assert encoder.blocks[0].mlp[0].weight.data_ptr() == state["encoder.blocks.0.mlp.0.weight"].data_ptr()  # no copy
    wide = random_state_dict(dims)
    wide["encoder.blocks.1.mlp.2.weight"][0, 0] = 1e6
    with pytest.raises(ConversionError, match=r"encoder\.blocks\.1\.mlp\.2\.weight has values beyond the range of torch.float16"):
        ane.build_encoder(dims, wide, dtype=torch.float16)
    assert ane.build_encoder(dims, wide).blocks[1].mlp[2].weight[0, 0, 0, 0] == 1e6  # fp32 holds it
